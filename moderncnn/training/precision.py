"""``precision: auto``: bf16 autocast where the chip has bf16 units, full fp32 elsewhere.

bf16-mixed keeps fp32 weights and runs the convolutions and matrix products in bfloat16. It
pays where the hardware multiplies bf16 natively: NVIDIA GPUs from Ampere on, and CPUs with
AVX-512 BF16 or AMX (a ResNet-18 training step ran 1.8-1.9x faster on a 2-core Zen 4). Without
such units bf16 is emulated and slower than fp32, so ``auto`` falls back to ``32-true`` there.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from moderncnn.inference.runtimes import cpu_has_bf16
from moderncnn.viz._figure import in_ipython

from .framework_internals import PrecisionInput

__all__ = ["PrecisionTrainer", "auto_precision", "has_bf16_units"]

AUTO = "auto"


def has_bf16_units(device: str) -> bool:
    """Whether ``device`` (``"cpu"`` or ``"cuda"``) multiplies bfloat16 natively."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device == "cpu":
        return cpu_has_bf16()
    return False


def _device_of(accelerator: Any) -> str:
    """The device type a Trainer's ``accelerator`` argument will train on."""
    if accelerator is None:
        accelerator = "auto"
    name = (accelerator if isinstance(accelerator, str) else type(accelerator).__name__).lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu" or "cuda" in name:
        return "cuda"
    return "cpu" if "cpu" in name else name


def auto_precision(accelerator: Any = "auto") -> str:
    """``"bf16-mixed"`` where the device ``accelerator`` picks has bf16 units, else fp32."""
    device = _device_of(accelerator)
    return "bf16-mixed" if has_bf16_units(device) else "32-true"


class PrecisionTrainer(L.Trainer):
    """``lightning.Trainer`` that also takes ``precision="auto"`` (:func:`auto_precision`) and
    shows its progress as text in a notebook (:func:`add_notebook_progress_bar`). Every trainer we
    build is one: ``moderncnn.Trainer``, ``from_config``'s and the CLI's."""

    def __init__(
        self, *, precision: PrecisionInput | Literal["auto"] | None = None, **kwargs: Any
    ) -> None:
        if precision == AUTO:
            precision = auto_precision(kwargs.get("accelerator", "auto"))
            rank_zero_info(f"precision auto: {precision}")
        add_notebook_progress_bar(kwargs)
        super().__init__(precision=precision, **kwargs)


def add_notebook_progress_bar(kwargs: dict[str, Any]) -> None:
    """Adds a plain-text tqdm bar to Trainer arguments under IPython, unless they name a bar
    or turn it off. (In place: jsonargparse reads the Trainer's arguments through a plain
    ``**kwargs`` pass-through.)

    Lightning's default bar with ``rich`` installed is Rich's live display, which replaces
    ``sys.stdout`` by a proxy; under ipykernel 7 a callback's ``print`` then goes from the
    proxy to the kernel's stream flush and back until ``RecursionError`` (issue 24). tqdm's bar
    writes lines of text, which every notebook front end shows.
    """
    if not in_ipython() or kwargs.get("enable_progress_bar") is False:
        return
    callbacks = kwargs.get("callbacks")
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, list | tuple):
        callbacks = [callbacks]
    if not any(isinstance(callback, ProgressBar) for callback in callbacks):
        kwargs["callbacks"] = [*callbacks, TQDMProgressBar()]
