"""predict and features run a batch-norm-folded, channels-last copy: the plain model's numbers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from moderncnn import create_model
from moderncnn.inference import load_model
from moderncnn.inference.backbone import feature_fn
from moderncnn.training.module import ImageClassifier

TINY_RESNET = {"channels": [8, 16], "layers": [1, 1]}


def trained_statistics(model: nn.Module) -> nn.Module:
    """Random batch-norm statistics and affine terms, so that folding them changes the convs."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            shape = m.running_mean.shape
            m.running_mean.copy_(torch.randn(shape, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(shape, generator=generator) * 0.1)
    return model.eval()


def images(n: int = 3, chans: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(1))


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.filterwarnings("error")  # a fallback to the plain model would warn
@pytest.mark.parametrize("stage", [None, 1])
def test_features_of_the_optimised_copy_equal_the_plain_models(stage: int | None) -> None:
    torch.manual_seed(0)
    model = trained_statistics(create_model("resnet18_cifar", **TINY_RESNET))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        fast = feature_fn(model, stage)(images())
        plain = feature_fn(model, stage, optimize=False)(images())
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert fast.shape == (3, 16)
    # The user's model is untouched: same tensors, still with its batch norms.
    torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)


class ForeignNet(nn.Module):
    """Not a moderncnn model: conv-BN-ReLU, then a flatten that needs a contiguous map."""

    def __init__(self, flatten_with_view: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.flatten_with_view = flatten_with_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)  # N x 4 x 14 x 14
        # .view fails on a channels-last map: the optimised copy cannot run this forward.
        return x.view(len(x), -1) if self.flatten_with_view else x


@pytest.mark.filterwarnings("error")
def test_a_foreign_module_is_folded_too() -> None:
    model = trained_statistics(ForeignNet())
    with torch.inference_mode():
        torch.testing.assert_close(
            feature_fn(model)(images()), feature_fn(model, optimize=False)(images())
        )


def test_a_foreign_forward_that_breaks_on_channels_last_falls_back_to_the_module() -> None:
    model = trained_statistics(ForeignNet(flatten_with_view=True))
    features = feature_fn(model)
    with torch.inference_mode():
        with pytest.warns(UserWarning, match="does not suit ForeignNet .*it runs unchanged"):
            first = features(images())
        torch.testing.assert_close(first, model(images()))
        torch.testing.assert_close(features(images()), model(images()))  # no second warning


def test_a_module_that_cannot_be_copied_runs_as_it_is() -> None:
    model = trained_statistics(ForeignNet())
    model.lock = threading.Lock()  # deepcopy cannot copy a lock
    with pytest.warns(UserWarning, match="does not suit ForeignNet .*TypeError"):
        features = feature_fn(model)
    with torch.inference_mode():
        expected = nn.functional.adaptive_avg_pool2d(model(images()), 1).flatten(1)
        torch.testing.assert_close(features(images()), expected)


def test_checkpoint_predictor_runs_folded_with_the_trained_models_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ImageClassifier("googlenet_cifar", num_classes=10, scheduler="none")
    trained_statistics(module.model)
    preprocess = {"image_size": 16, "resize_size": None, "mean": [0.5] * 3, "std": [0.25] * 3}
    module.hparams.preprocess = preprocess
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save(checkpoint, tmp_path / "run.ckpt")

    loaded = load_model(tmp_path / "run.ckpt")
    # Folded (the aux heads, unused in eval mode, keep theirs), and the module left unfolded.
    assert isinstance(loaded.fast_network.conv1.bn, nn.Identity)
    assert batch_norms(loaded.fast_network) < batch_norms(module.model)
    with torch.inference_mode():
        expected = module.eval()(images())
        torch.testing.assert_close(loaded(images()), expected, rtol=1e-4, atol=1e-4)
