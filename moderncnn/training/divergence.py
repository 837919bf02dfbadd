"""A warning for a run that learnt nothing: validation loss far above a uniform guess's while
the accuracy sits at chance.

That pair is the signature of weights (or BatchNorm running statistics) blown up by too high a
learning rate, typically a short trial run of a long recipe: a warm-up longer than the run
ends training at the peak rate. Without the warning the run finishes quietly with 10% accuracy.
"""

from __future__ import annotations

import math

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["DivergenceWarning"]


class DivergenceWarning(L.Callback):
    """Warns (once per run) when ``val_loss`` exceeds ``loss_factor`` x ln(classes), the loss of
    a uniform guess, while ``val_acc`` is below ``chance_factor`` / classes.

    A validation within the first ``min_steps`` optimiser steps is not judged: BatchNorm's
    running statistics still hold much of their initial values (momentum 0.1 keeps 35% of
    them after 10 steps, 0.5% after 50), so a healthy network can score a huge loss there
    (the degradation config validates from step 10). A run shorter than that is judged once,
    on its last validation, when training ends.

    Args:
        loss_factor: how many uniform-guess losses count as exploded.
        chance_factor: how many times chance still counts as chance.
        min_steps: optimiser steps before a validation is judged.
    """

    def __init__(
        self, loss_factor: float = 3.0, chance_factor: float = 1.5, min_steps: int = 50
    ) -> None:
        self.loss_factor = loss_factor
        self.chance_factor = chance_factor
        self.min_steps = min_steps
        self.warned = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.warned = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step < self.min_steps:
            return
        self._judge(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._judge(trainer, pl_module)  # the last validation of a run shorter than min_steps

    def _judge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.warned:
            return
        classes = getattr(pl_module, "num_classes", None)
        loss = trainer.callback_metrics.get("val_loss")
        accuracy = trainer.callback_metrics.get("val_acc")
        if not isinstance(classes, int) or classes < 2 or loss is None or accuracy is None:
            return
        loss, accuracy = float(loss), float(accuracy)
        uniform = math.log(classes)
        exploded = not math.isfinite(loss) or loss > self.loss_factor * uniform
        if exploded and accuracy < self.chance_factor / classes:
            self.warned = True
            rank_zero_warn(_message(trainer, pl_module, loss, accuracy, classes, uniform))


def _message(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    loss: float,
    accuracy: float,
    classes: int,
    uniform: float,
) -> str:
    hparams = getattr(pl_module, "hparams", {})
    lr, warmup = hparams.get("lr"), hparams.get("warmup_epochs")
    cause = (
        "the weights or BatchNorm's running statistics diverged, most likely because the "
        f"learning rate (model.lr {lr}) is too high for this run"
    )
    if warmup is not None and trainer.max_epochs is not None and warmup >= trainer.max_epochs > 0:
        cause += (
            f"; model.warmup_epochs ({warmup}) >= trainer.max_epochs ({trainer.max_epochs}), "
            "so the rate is still rising to its peak when training stops"
        )
    return (
        f"epoch {trainer.current_epoch}: val_loss {loss:.3g} is over {loss / uniform:.0f}x a "
        f"uniform guess's ({uniform:.2f}) and val_acc {accuracy:.1%} is at chance "
        f"({1 / classes:.1%}): {cause}. Lower model.lr, shorten model.warmup_epochs or train "
        "for more epochs"
    )
