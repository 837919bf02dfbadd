"""optimize_for_inference: same logits, fewer batch norms, channels-last, the original untouched."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from moderncnn import create_model, list_models
from moderncnn.inference import conv_bn_pairs, optimize_for_inference
from moderncnn.models.layers import ConvBNAct

# Building these (random init of 14M-60M parameters) and copying them takes seconds on 2 cores.
SLOW = {"resnet101", "resnet152", "densenet161", "densenet169", "densenet201", "inception_v3"}
# The papers' deeper CIFAR nets (resnet1202: 19M parameters): resnet20 and densenet40 stand in.
SLOW |= {"resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "plain32", "plain44"}
SLOW |= {"plain56", "plain110", "preact_resnet110", "preact_resnet164", "densenet_bc_100"}
ALL_MODELS = [
    pytest.param(n, marks=pytest.mark.sweep) if n.removesuffix("_cifar") in SLOW else n
    for n in list_models()
]


def randomize_batch_norms(model: nn.Module) -> None:
    """Random statistics and affine parameters, so that folding changes every weight."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, _BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
                bn.weight.copy_(0.5 + torch.rand(n, generator=g))
                bn.bias.copy_(0.1 * torch.randn(n, generator=g))


def count_batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def assert_same_logits(fused: nn.Module, model: nn.Module, x: Tensor) -> None:
    with torch.inference_mode():
        expected = model.eval()(x)
        actual = fused(x.contiguous(memory_format=torch.channels_last))
    # 1e-4 relative to the logits' scale: random batch norms can grow activations a lot.
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_logits_fewer_batch_norms(name: str) -> None:
    model = create_model(name, num_classes=10)
    randomize_batch_norms(model)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    fused = optimize_for_inference(model)
    assert model.training and fused is not model

    x = torch.randn(2, *model.min_input_size)
    assert_same_logits(fused, model, x)
    assert type(fused) is type(model) and not fused.training
    assert count_batch_norms(fused) < count_batch_norms(model)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    # the user's model is untouched: same tensors, its batch norms still in place
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_resnet_folds_every_batch_norm_into_conv_and_downsample() -> None:
    model = create_model("resnet50_cifar", num_classes=10)
    fused = optimize_for_inference(model)
    assert count_batch_norms(fused) == 0
    assert fused.conv1.bias is not None and fused.layer1[0].downsample[0].bias is not None
    assert "bn1.weight" not in fused.state_dict() and "bn1.weight" in model.state_dict()
    assert fused.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 4, 4)


def test_densenet_keeps_pre_activation_norms_and_its_memory_efficient_flag() -> None:
    model = create_model("densenet121_cifar", num_classes=10, memory_efficient=True)
    randomize_batch_norms(model)
    pairs = dict(conv_bn_pairs(model.eval()))
    layer = "features.denseblock1.denselayer1"
    assert pairs[f"{layer}.conv1"] == f"{layer}.norm2"  # conv1 -> norm2 folds
    assert f"{layer}.norm1" not in pairs.values()  # norm1 reads a concatenation
    fused = optimize_for_inference(model)
    dense_layers = 6 + 12 + 24 + 16
    assert count_batch_norms(fused) == dense_layers + 3 + 1  # norm1s, transitions, norm5
    assert_same_logits(fused, model, torch.randn(2, 3, 32, 32))
    assert all(m.memory_efficient for m in model.modules() if hasattr(m, "memory_efficient"))


# Left unfolded: DenseNet-121's 58 norm1s, 3 transition norms and norm5; GoogLeNet's two aux
# heads' norms, which eval-mode forward never calls (so the trace never sees them).
@pytest.mark.parametrize(("name", "left"), [("resnet18", 0), ("densenet121", 62), ("googlenet", 2)])
def test_torchvision_models(name: str, left: int) -> None:
    kwargs = {"init_weights": False} if name == "googlenet" else {}  # skip the slow init
    model = getattr(torchvision.models, name)(num_classes=10, **kwargs)
    randomize_batch_norms(model)
    fused = optimize_for_inference(model)
    assert_same_logits(fused, model, torch.randn(2, 3, 64, 64))
    assert count_batch_norms(fused) == left


def test_called_under_inference_mode_gives_ordinary_tensors() -> None:
    model = create_model("resnet18_cifar", num_classes=10)
    with torch.inference_mode():
        fused = optimize_for_inference(model, channels_last=False)
    assert not fused.conv1.weight.is_inference() and not fused.conv1.weight.requires_grad
    assert fused.conv1.weight.is_contiguous()
    assert_same_logits(fused, model, torch.randn(2, 3, 32, 32))


class ConvReadTwice(nn.Module):
    """The conv output feeds the batch norm and a skip connection: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class DataDependent(nn.Module):
    """Control flow on tensor values: fx cannot trace it, but it can trace its children."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBNAct(3, 8, 3, padding=1)
        self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(x)
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_conv_read_twice_is_not_folded() -> None:
    model = ConvReadTwice()
    randomize_batch_norms(model)
    assert conv_bn_pairs(model.eval()) == []
    assert_same_logits(optimize_for_inference(model), model, torch.randn(2, 3, 8, 8))


def test_untraceable_module_is_traced_child_by_child() -> None:
    model = DataDependent()
    randomize_batch_norms(model)
    assert conv_bn_pairs(model.eval()) == [("block.conv", "block.bn")]
    fused = optimize_for_inference(model)
    assert isinstance(fused.block.bn, nn.Identity) and isinstance(fused.bn, nn.BatchNorm2d)
    assert_same_logits(fused, model, torch.randn(2, 3, 8, 8))
