"""ImageClassifier: argument checks, the auxiliary-head loss, metrics and optimiser settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moderncnn.models import UnknownModelError
from moderncnn.training.module import (
    ImageClassifier,
    _WarmupCosine,
    _WarmupMultiStep,
    _WarmupStep,
)

TINY_RESNET = {"channels": [8, 16], "layers": [1, 1]}


def test_unknown_model_name_suggests_close_names() -> None:
    match = r"unknown model name 'resnet18_cifr'\. Did you mean 'resnet18_cifar'"
    with pytest.raises(UnknownModelError, match=match):
        ImageClassifier("resnet18_cifr")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of 'sgd', 'adam', 'adamw', got 'rms"),
        ({"scheduler": "linear"}, "scheduler must be one of"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got 1.0"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"class_names": ["a", "b"]}, "class_names must be 10 names, not 2"),
        ({"milestones": [0.75, 0.5]}, r"milestones must be null or increasing fractions"),
        ({"milestones": [32000]}, r"fractions of the run in \(0, 1\), e.g. \[0.5, 0.75\]"),
        ({"curve_every_n_steps": -1}, "curve_every_n_steps must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageClassifier("resnet18_cifar", model_kwargs=TINY_RESNET, **kwargs)


def test_an_nn_module_is_accepted_and_left_out_of_the_hyperparameters() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    module = ImageClassifier(net)
    assert module.model is net and "model" not in module.hparams
    assert module(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_aux_losses_count_in_training_only() -> None:
    module = ImageClassifier("googlenet_cifar", num_classes=10, in_chans=1, aux_loss_weight=0.3)
    images, target = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, value)  # no Trainer here
    module.log_dict = lambda values, **_: None

    module.train()
    torch.manual_seed(1)
    loss = module.training_step((images, target), 0)
    torch.manual_seed(1)  # same dropout masks in the aux heads
    out = module.model(images)
    assert len(out) == 3  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
    main, aux2, aux1 = (F.cross_entropy(o, target) for o in out)
    torch.testing.assert_close(loss, main + 0.3 * (aux2 + aux1))
    assert loss > main  # the aux terms are really there

    module.eval()
    with torch.no_grad():
        module.validation_step((images, target), 0)
        expected = F.cross_entropy(module.model(images), target)
    torch.testing.assert_close(logged["val_loss"], expected)


def test_train_loss_is_the_main_heads_and_the_aux_weighted_total_is_logged_beside_it() -> None:
    # Issue 24: train_loss (main + 0.3 x each aux) sat above val_loss (main only) on one axis.
    module = ImageClassifier("googlenet_cifar", num_classes=10, in_chans=1, aux_loss_weight=0.3)
    images, target = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, value)  # no Trainer here
    module.log_dict = lambda values, **_: None
    module.train()
    torch.manual_seed(1)
    loss = module.training_step((images, target), 0)
    torch.manual_seed(1)
    main = F.cross_entropy(module.model(images)[0], target)
    torch.testing.assert_close(logged["train_loss"], main)
    torch.testing.assert_close(logged["train_loss_total"], loss)
    assert logged["train_loss_total"] > logged["train_loss"]

    plain = ImageClassifier("resnet18_cifar", model_kwargs=TINY_RESNET, in_chans=1)
    logged.clear()
    plain.log = lambda name, value, **_: logged.__setitem__(name, value)
    plain.log_dict = lambda values, **_: None
    plain.training_step((images, target), 0)
    assert set(logged) == {"train_loss"}  # no aux heads: one loss, no duplicate column


def test_label_smoothing_applies_to_the_loss() -> None:
    module = ImageClassifier("resnet18_cifar", model_kwargs=TINY_RESNET, label_smoothing=0.1)
    logits, target = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    loss, _ = module.loss(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_top5_accuracy_only_with_more_than_five_classes() -> None:
    ten = ImageClassifier("resnet18_cifar", num_classes=10, model_kwargs=TINY_RESNET)
    five = ImageClassifier("resnet18_cifar", num_classes=5, model_kwargs=TINY_RESNET)
    assert set(ten.val_metrics.keys()) == {"val_acc", "val_acc_top5"}
    assert set(five.val_metrics.keys()) == {"val_acc"}


def test_accuracy_is_the_fraction_of_correct_images() -> None:
    module = ImageClassifier("resnet18_cifar", num_classes=10, model_kwargs=TINY_RESNET)
    logits = F.one_hot(torch.tensor([0, 0, 0, 1]), 10).float()
    module.test_metrics.update(logits, torch.tensor([0, 0, 0, 2]))
    # 3 of 4 right; the macro average (torchmetrics' default) would give (1 + 0) / 2 = 0.5.
    assert module.test_metrics.compute()["test_acc"].item() == pytest.approx(0.75)


def test_no_weight_decay_on_batchnorm_and_biases() -> None:
    module = ImageClassifier("resnet18_cifar", model_kwargs=TINY_RESNET, weight_decay=5e-4)
    decay, no_decay = module._param_groups()
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])  # conv and linear weights
    bn_weight = module.model.bn1.weight
    assert any(p is bn_weight for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.parameters()))


def test_schedule_factors() -> None:
    cosine = _WarmupCosine(warmup=10, total=110)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0, abs=1e-12)
    step = _WarmupStep(warmup=0, every=30, gamma=0.1)
    assert [step(s) for s in (0, 29, 30, 65)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert math.isclose(_WarmupStep(warmup=4, every=30, gamma=0.1)(1), 0.5)
    # The papers' schedule: / 10 at 32k and 48k of 64k iterations (milestones 0.5, 0.75).
    multistep = _WarmupMultiStep(warmup=0, drops=[32000, 48000], gamma=0.1, total=64000)
    factors = [multistep(s) for s in (0, 31999, 32000, 47999, 48000, 63999)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert _WarmupMultiStep(warmup=4, drops=[8], gamma=0.1, total=10)(1) == 0.5


def test_multistep_schedule_drops_at_fractions_of_the_run() -> None:
    module = ImageClassifier(
        "resnet20", model_kwargs={"layers": [1, 1, 1]}, scheduler="multistep",
        milestones=[0.5, 0.75], warmup_epochs=0,
    )  # fmt: skip
    module._schedule_length = lambda: (200, 10)  # 200 steps, 10 per epoch (no Trainer here)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = module._scheduler(optimizer)
    rates = []
    for _ in range(200):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[99] == pytest.approx(0.1) and rates[100] == pytest.approx(0.01)
    assert rates[149] == pytest.approx(0.01) and rates[150] == pytest.approx(0.001)


def test_predict_step_returns_probabilities() -> None:
    module = ImageClassifier("resnet18_cifar", in_chans=1, model_kwargs=TINY_RESNET).eval()
    probs = module.predict_step((torch.randn(3, 1, 16, 16), torch.zeros(3)), 0)
    assert probs.shape == (3, 10) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_input_too_small_names_the_minimum_and_the_cifar_twin() -> None:
    """DenseNet's ImageNet stem and transitions shrink 28 px to nothing: one line, not torch's
    "Calculated padded input size per channel: (1 x 1)"."""
    from moderncnn.io.errors import ConfigError

    kwargs = {"growth_rate": 4, "block_config": [1, 1, 1, 1], "num_init_features": 8}
    module = ImageClassifier("densenet121", num_classes=3, in_chans=1, model_kwargs=kwargs)
    with pytest.raises(ConfigError) as caught:
        module(torch.rand(2, 1, 28, 28))
    message = str(caught.value)
    assert "at least 32 x 32" in message and "got 28 x 28" in message
    assert "use densenet121_cifar" in message and "\n" not in message
    assert module(torch.rand(2, 1, 32, 32)).shape == (2, 3)
