"""``moderncnn lr-find -c CONFIG``: Lightning's learning-rate range test on a training config.

Trains the config's model for ``--steps`` steps while the learning rate grows exponentially from
``--min-lr`` to ``--max-lr`` (Smith 2017; fastai's ``lr_find``), using Lightning's
``Tuner.lr_find`` (the sweep, its smoothed loss, the weights restored afterwards). Writes the
loss-vs-learning-rate curve with the suggestion marked and prints it as a config line.
Nothing else is written: no run folder, no checkpoint; the model's weights are not kept.

The suggestion is the steepest fall of the smoothed loss per decade of learning rate (the
gradient against log lr), and beside it the rate where the loss is lowest after that fall.
Lightning's own ``suggestion()`` takes the gradient per unit of lr, which on an exponential
sweep favours the small-lr end: on ``fast_cpu.yaml`` it proposed 0.0033, where the loss had
barely begun to fall, for a recipe trained at 0.4; the per-decade fall proposed 0.1-0.2.

    moderncnn lr-find -c configs/quickstart.yaml              # lr_find.png, "model.lr: ..."
    moderncnn lr-find -c configs/quickstart.yaml --steps 50 -o lr.png --model.optimizer=adam
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from moderncnn.io.configs import find_config
from moderncnn.io.errors import ConfigError, ModernCNNError
from moderncnn.viz._figure import figure_format, finish, new_figure

from .callbacks import AtomicCheckpointIO
from .cli import build_cli, one_message
from .precision import PrecisionTrainer

__all__ = ["LRFindResult", "lr_find", "show_lr_find"]


# Lightning's smoothing of the loss: avg = beta * avg + (1 - beta) * loss, divided by a bias
# correction 1 - beta**(global_step + 1) read after the step was counted, one power too many:
# its first smoothed losses are about half the real loss (1.2 for a 10-class net's 2.3), and the
# curve rises over the first ~40 steps. unbiased() divides by the right power instead.
LIGHTNING_BETA = 0.98

# Points left out of the suggestion at each end, as Lightning's suggestion() does: the first
# smoothed losses are still dominated by the smoothing's start, the last one may be divergent.
SKIP_BEGIN, SKIP_END = 10, 1


@dataclass
class LRFindResult:
    """The range test's curve and its suggested learning rate (None: the loss never fell)."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None  # steepest fall of the loss per decade of lr
    lowest: float | None  # where the loss is lowest after that fall
    config_lr: float
    plot: Path | None
    figure: Any = None  # the matplotlib figure (a notebook shows it as the cell's value)


def lr_find(
    config: str | Path,
    *extra: str,
    overrides: Mapping[str, Any] | None = None,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    steps: int = 100,
    plot: str | Path | None = "lr_find.png",
) -> LRFindResult:
    """Learning-rate range test of a training config: the loss over a rising lr, and a value.

    Args:
        config: training YAML (or shipped config name), as moderncnn fit -c takes.
        extra: config settings as command-line words ("--model.optimizer=adam").
        overrides: dotted keys set in the config ({"trainer.precision": "bf16-mixed"}); on
            the command line any --KEY VALUE with a dotted key (--model.lr 0.1).
        min_lr: first learning rate.
        max_lr: last learning rate.
        steps: training steps of the test.
        plot: the PNG to write (None: none); the figure is also returned, for a notebook.
    """
    settings = [*extra, *(f"--{k}={json.dumps(v)}" for k, v in (overrides or {}).items())]
    if not (0 < min_lr < max_lr) or not math.isfinite(max_lr):
        raise ConfigError(f"lr-find: need 0 < min_lr < max_lr, got {min_lr:g} and {max_lr:g}")
    if not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"lr-find: steps must be an int >= 2, got {steps!r}")
    path = find_config(config)
    if plot is not None:
        figure_format(plot)  # a folder or an unknown suffix: refused before the test runs
    try:
        cli = build_cli(["-c", str(path), *settings], run=False, trainer_class=PrecisionTrainer)
    except (ArgumentError, ValueError, MisconfigurationException) as err:
        # An unknown key, a value of the wrong type, a bad setting of the model or data: one line.
        raise ConfigError(f"{path}: {one_message(err)}") from err
    model, data, settings = cli.model, cli.datamodule, cli.config["trainer"]
    with tempfile.TemporaryDirectory(prefix="moderncnn-lr-find-") as scratch:
        # A trainer of its own: no loggers, checkpoints or report callbacks, so no run folder;
        # Lightning's temporary checkpoint of the initial weights goes into `scratch`.
        trainer = PrecisionTrainer(
            accelerator=settings.get("accelerator", "auto"),
            devices=1,
            precision=settings.get("precision"),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=scratch,
            max_steps=steps,
            plugins=[AtomicCheckpointIO()],  # reads its temporary checkpoint weights_only=True
        )
        finder = Tuner(trainer).lr_find(
            model,
            datamodule=data,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=steps,
            update_attr=False,
        )
    if finder is None or not finder.results.get("lr"):
        raise ModernCNNError(f"lr-find: {path}: the range test ran no training step")
    lrs = [float(v) for v in finder.results["lr"]]
    losses = unbiased([float(v) for v in finder.results["loss"]])
    steepest, lowest = steepest_fall(lrs, losses)
    figure = new_figure(figsize=(6, 4))
    ax = figure.add_subplot()
    ax.plot(lrs, losses)
    if steepest is not None:
        ax.plot([lrs[steepest]], [losses[steepest]], "o", color="red", label="steepest fall")
        ax.axvline(lrs[lowest], color="grey", linestyle="--", label="lowest loss after it")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"{path.name}: loss while the learning rate grows")
    finish(figure, plot)
    return LRFindResult(
        lrs=lrs,
        losses=losses,
        suggestion=None if steepest is None else lrs[steepest],
        lowest=None if lowest is None else lrs[lowest],
        config_lr=float(model.hparams.lr),
        plot=None if plot is None else Path(plot),
        figure=figure,
    )


def unbiased(smoothed: list[float], beta: float = LIGHTNING_BETA) -> list[float]:
    """Lightning's smoothed losses with the bias correction of step ``t`` (0-based) being
    ``1 - beta**(t + 1)`` rather than its ``1 - beta**(t + 2)``; a test checks this on a run
    whose loss cannot change (the learning rate too small to move the weights)."""
    return [loss * (1 - beta ** (t + 2)) / (1 - beta ** (t + 1)) for t, loss in enumerate(smoothed)]


def steepest_fall(lrs: list[float], losses: list[float]) -> tuple[int | None, int | None]:
    """Indices of the steepest fall of ``losses`` per decade of ``lrs`` and of the lowest loss
    after it, leaving out :data:`SKIP_BEGIN` / :data:`SKIP_END` points; (None, None) when the
    loss never falls there."""
    index = [
        i for i in range(SKIP_BEGIN, len(lrs) - SKIP_END) if math.isfinite(losses[i]) and lrs[i] > 0
    ]
    if len(index) < 3:
        return None, None
    log_lr = torch.tensor([math.log10(lrs[i]) for i in index], dtype=torch.float64)
    loss = torch.tensor([losses[i] for i in index], dtype=torch.float64)
    slope = torch.gradient(loss, spacing=[log_lr])[0]
    at = int(slope.argmin())
    if not slope[at] < -1e-6 * float(loss.abs().max()):  # flat within rounding: no fall
        return None, None
    after = int(loss[at:].argmin()) + at
    return index[at], index[after]


def show_lr_find(result: LRFindResult, arguments: dict[str, Any]) -> int:
    """What ``moderncnn lr-find`` prints: the range, the curve, and the suggested lr."""
    print(f"lr-find: {len(result.lrs)} steps, lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}")
    print(f"curve: {result.plot}")
    if result.suggestion is None:
        print("no suggestion: the loss did not fall; try a larger --max_lr or more --steps")
        return 1
    print(f"\nmodel.lr: {result.suggestion:.3g}   # suggested: the steepest fall of the loss")
    print(
        f"# the loss is lowest at lr {result.lowest:.3g}: a one-cycle or cosine peak usually sits "
        f"between the two; {Path(arguments['config']).name} has {result.config_lr:g}"
    )
    return 0
