"""The speed switches change speed only: channels-last, bf16 autocast, torch.compile, on-device
augmentation give the numbers of the plain fp32 NCHW eager path."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from moderncnn.data import CIFAR10DataModule
from moderncnn.training.module import ImageClassifier

TINY_RESNET = {"channels": [8, 16], "layers": [1, 1]}


def tiny_classifier(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier("resnet18_cifar", model_kwargs=TINY_RESNET, **kwargs)


def no_logging(module: ImageClassifier) -> ImageClassifier:
    module.log = lambda *_, **__: None  # no Trainer here
    module.log_dict = lambda *_, **__: None
    return module


def loss_and_grads(module: ImageClassifier, batch: tuple) -> tuple[torch.Tensor, dict]:
    no_logging(module).train()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}


def batch(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % 10


def test_channels_last_training_step_matches_nchw() -> None:
    nchw, nhwc = tiny_classifier(channels_last=False), tiny_classifier(channels_last=True)
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    loss_a, grads_a = loss_and_grads(nchw, batch())
    loss_b, grads_b = loss_and_grads(nhwc, batch())
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("device", "channels_last"), [("cpu", False), ("cuda", True)])
def test_auto_channels_last_follows_the_trainers_device(device: str, channels_last: bool) -> None:
    module = tiny_classifier()  # channels_last="auto"
    assert module.memory_format == torch.contiguous_format  # no Trainer yet: NCHW
    module._trainer = SimpleNamespace(  # setup() only asks for the device and the data
        strategy=SimpleNamespace(root_device=torch.device(device)), datamodule=None
    )
    module.setup("fit")
    expected = torch.channels_last if channels_last else torch.contiguous_format
    assert module.memory_format == expected
    assert module.model.conv1.weight.is_contiguous(memory_format=expected)


def test_channels_last_must_be_a_bool_or_auto() -> None:
    with pytest.raises(ValueError, match="channels_last must be true, false or 'auto', got 'yes'"):
        tiny_classifier(channels_last="yes")


def test_bf16_mixed_precision_trains_and_predicts_float_probabilities() -> None:
    images, labels = batch(n=8)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    module = tiny_classifier(scheduler="none")
    before = module.model.fc.weight.detach().clone()
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert not torch.equal(module.model.fc.weight, before)  # it did learn
    assert module.model.fc.weight.dtype == torch.float32  # master weights stay fp32
    (probs, _) = trainer.predict(module, dataloaders=loader)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(4), rtol=0, atol=1e-5)


def test_compile_that_raises_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    module = tiny_classifier(compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*eager"):
        module.configure_model()
    assert module.compiled_forward is None
    module.configure_model()  # no second attempt, no second warning
    expected, _ = loss_and_grads(tiny_classifier(), batch())
    torch.testing.assert_close(loss_and_grads(module, batch())[0], expected)
    assert not any("compiled" in key for key in module.state_dict())


def test_compile_failing_at_the_first_call_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch.compile is lazy: a missing backend usually shows only when the model first runs.
    def lazy_compile(model, **kwargs):
        def call(*args):
            raise RuntimeError("backend compiler failed")

        return SimpleNamespace(__call__=call)

    monkeypatch.setattr(torch, "compile", lazy_compile)
    module = tiny_classifier(compile=True)
    module.configure_model()
    assert module.compiled_forward is not None
    with pytest.warns(UserWarning, match="backend compiler failed"):
        loss, _ = loss_and_grads(module, batch())
    assert module.compiled_forward is None
    torch.testing.assert_close(loss, loss_and_grads(tiny_classifier(), batch())[0])


def test_compiled_model_gives_the_eager_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dynamo's "eager" backend traces the model as Inductor would, without compiling C++:
    # seconds on a CPU, and it proves the network compiles without errors.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    module = tiny_classifier(compile=True)
    module.configure_model()
    loss, grads = loss_and_grads(module, batch())
    assert module.compiled_forward is not None  # still compiled: nothing fell back
    expected, expected_grads = loss_and_grads(tiny_classifier(), batch())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grads, expected_grads)
    assert set(module.state_dict()) == set(tiny_classifier().state_dict())


def test_tensor_data_augments_and_normalises_on_the_batchs_device() -> None:
    # The meta device holds no data: any step that made a CPU tensor would fail or leave it.
    data = CIFAR10DataModule(data_dir="unused")
    data.trainer = SimpleNamespace(training=True)
    images = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta")
    labels = torch.empty(8, dtype=torch.long, device="meta")
    out, target = data.on_after_batch_transfer((images, labels), 0)
    assert out.device.type == "meta" and out.dtype == torch.float32
    assert out.shape == images.shape and target is labels
