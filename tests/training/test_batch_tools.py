"""MixUp / CutMix give soft targets and train; test-time augmentation averages the views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moderncnn.inference.tta import tta_logits, views
from moderncnn.io.errors import ConfigError
from moderncnn.training.batch_tools import batch_mixer
from moderncnn.training.module import ImageClassifier

TINY = {"channels": [8, 16], "layers": [1, 1]}


def tiny(**kwargs) -> ImageClassifier:
    return ImageClassifier(
        "resnet18_cifar", num_classes=4, in_chans=1, model_kwargs=TINY, scheduler="none", **kwargs
    )


@pytest.mark.parametrize(("mixup", "cutmix"), [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_mixed_batches_have_soft_targets_that_sum_to_one(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    mixer = batch_mixer(mixup, cutmix, num_classes=5)
    images, labels = torch.rand(16, 1, 28, 28), torch.arange(16) % 5
    mixed, soft = mixer(images, labels)
    assert mixed.shape == images.shape and soft.shape == (16, 5)
    torch.testing.assert_close(soft.sum(1), torch.ones(16))
    assert ((soft > 0).sum(1) == 2).any()  # two labels in a mixed image, not one-hot
    assert not torch.equal(mixed, images)
    assert batch_mixer(0.0, 0.0, 5) is None


def test_the_training_loss_takes_the_soft_targets() -> None:
    torch.manual_seed(0)
    module = tiny(mixup_alpha=1.0)
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8) % 4
    given = []
    real_losses = module._losses  # what the training step minimises (main head + aux heads)

    def recording_losses(output, target):
        given.append(target)
        return real_losses(output, target)

    module._losses = recording_losses
    module.log = module.log_dict = lambda *args, **kwargs: None
    loss, _ = module._step((images, labels), "train")
    (target,) = given
    assert target.dtype == torch.float32 and target.shape == (8, 4)  # soft, not labels
    assert not torch.equal(target, F.one_hot(labels, 4).float())
    assert torch.isfinite(loss) and loss.requires_grad


def test_tta_averages_the_probabilities_of_the_views() -> None:
    torch.manual_seed(0)
    module = tiny(tta=["hflip"]).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = (module(x).softmax(1) + module(x.flip(-1)).softmax(1)) / 2
        got = tta_logits(module, x, ["hflip"]).exp()
        predicted = module.predict_step(x, 0)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(predicted, expected)
    assert not torch.allclose(expected, module(x).softmax(1))  # the flip changed something
    assert len(views(x, ["hflip", "shift"])) == 4
    _, down_right, up_left = views(x, ["shift"])  # moved by 2 px, the edges replicated
    torch.testing.assert_close(down_right[..., 2:, 2:], x[..., :-2, :-2])
    torch.testing.assert_close(up_left[..., :-2, :-2], x[..., 2:, 2:])


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="tta must be a list of hflip, shift"):
        tiny(tta=["rotate"])
    with pytest.raises(ConfigError, match="mixup_alpha must be >= 0"):
        tiny(mixup_alpha=-1.0)
