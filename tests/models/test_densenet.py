"""DenseNet-specific behaviour: checkpointed layers, block widths, compression."""

from __future__ import annotations

import torch

from moderncnn.models import create_model
from moderncnn.models.densenet import DenseBlock


def test_memory_efficient_matches_plain_outputs_and_gradients() -> None:
    kwargs = dict(num_classes=5, growth_rate=8, block_config=(2, 2), num_init_features=16)
    plain = create_model("densenet121_cifar", **kwargs)
    efficient = create_model("densenet121_cifar", memory_efficient=True, **kwargs)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    for model in (plain, efficient):
        model.train()(x).square().sum().backward()
    assert torch.allclose(plain(x), efficient(x), atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_dense_block_concatenates_growth_rate_channels_per_layer() -> None:
    block = DenseBlock(3, in_chs=10, growth_rate=4, bn_size=2)
    x = torch.randn(2, 10, 8, 8)
    out = block(x)
    assert out.shape == (2, 10 + 3 * 4, 8, 8)
    assert torch.equal(out[:, :10], x), "the block's input passes through unchanged"


def test_width_depth_and_compression_set_num_features() -> None:
    model = create_model(
        "densenet121", num_classes=3, growth_rate=12, block_config=(2, 3, 4),
        num_init_features=24, compression=0.5,
    )  # fmt: skip
    # 24 + 2*12 = 48 -> 24; 24 + 3*12 = 60 -> 30; 30 + 4*12 = 78
    assert model.num_features == 78
    assert [f.num_chs for f in model.feature_info] == [48, 60, 78]
