"""``ImageClassifier``: any registered model, trained with cross-entropy under Lightning.

Its ``__init__`` arguments are the ``model:`` section of a training config (LightningCLI), and
they are saved in every checkpoint, so ``ImageClassifier.load_from_checkpoint(path)`` rebuilds
the network from the checkpoint alone (nanoGPT's rule: a checkpoint holds its model's recipe).
"""

from __future__ import annotations

import bisect
import inspect
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from moderncnn.inference.loading import weights_card
from moderncnn.inference.tta import check_tta, tta_logits
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.checkpoint import paths_as_text, read_checkpoint
from moderncnn.io.download import cached_download
from moderncnn.io.errors import ConfigError
from moderncnn.models import check_model_name, create_model, list_models

from .batch_tools import batch_mixer
from .param_groups import weight_decay_groups
from .preflight import channels_last_is_safe, check_model_kwargs

# Lightning's EMAWeightAveraging warns about any model with a configure_model hook (it cannot
# shard layers made there); ours only compiles the network, so the warning does not apply.
warnings.filterwarnings(
    "ignore", message=r"You're using the WeightAveraging callback with a model that overrides"
)

Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["onecycle", "cosine", "step", "none", "multistep"]
Interval = Literal["step", "epoch"]
LRScaling = Literal["none", "linear", "sqrt"]
Stage = Literal["train", "val", "test"]

# Top-5 accuracy says something only when there are clearly more than 5 classes to choose from.
TOP5_MIN_CLASSES = 6


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"model.{name} must be {requirement}, got {value!r}")


# The largest float32: a larger rate or decay cannot even be applied to float32 weights.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _finite(value: Any) -> bool:
    """A real number that is not nan or +-inf (YAML's ``.inf``/``.nan`` parse as floats) and
    fits a float32 (``lr: 1e308`` overflows in the optimizer step)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and abs(value) <= _FLOAT32_MAX


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, name, value, f"one of {', '.join(map(repr, allowed))}")


def preprocess_of(data: Any) -> dict[str, Any] | None:
    """A data module's evaluation transform as a dict (``Preprocess.to_dict``), or None.

    Saved in the checkpoint so that ``moderncnn predict --checkpoint`` can prepare image files
    the way the test images were prepared.
    """
    preprocess = Preprocess.of_datamodule(data)
    return None if preprocess is None else preprocess.to_dict()


def _with_weights_card(model: str, in_chans: int, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` completed from the card of ``weights`` when it is a checkpoint or saved
    model of ours: fine-tuning builds the network those weights came from (its widths and
    depths), as ``features`` and ``predict`` do; a given key wins (issue 24)."""
    weights = model_kwargs.get("weights")
    card = weights_card(weights)
    if card is None:
        return model_kwargs
    if card.architecture != model:
        raise ConfigError(
            f"model_kwargs.weights {weights} holds a {card.architecture} (its card) but "
            f"model.model is {model}: set model.model: {card.architecture}"
        )
    if card.in_chans != in_chans:
        kind = {1: "grey", 3: "RGB"}.get(card.in_chans, f"{card.in_chans}-channel")
        hint = " (photos are converted to grey, as features and predict do)" * (card.in_chans == 1)
        raise ConfigError(
            f"model_kwargs.weights {weights} was trained on {kind} images (in_chans="
            f"{card.in_chans}) but the data gives in_chans={in_chans}: set data.init_args."
            f"in_chans: {card.in_chans}{hint}"
        )
    return {**card.model_kwargs, **model_kwargs}


def too_small_message(network: nn.Module, name: Any, images: Tensor) -> str | None:
    """One line naming the network's smallest input and its ``*_cifar`` twin, when ``images``
    are smaller than ``network.min_input_size`` (else None: the error has another cause)."""
    smallest = getattr(network, "min_input_size", None)
    height, width = images.shape[-2:]
    if smallest is None or (height >= smallest[1] and width >= smallest[2]):
        return None
    model = name if isinstance(name, str) else type(network).__name__
    twin = f"{model}_cifar"
    advice = f"use {twin}, its small-image variant, or " if twin in list_models() else "use "
    return (
        f"model {model} takes images of at least {smallest[1]} x {smallest[2]} pixels (its "
        f"stem and stages shrink them), got {height} x {width}; {advice}larger images "
        "(data.init_args.image_size)"
    )


class ImageClassifier(L.LightningModule):
    """Trains a classifier: loss, optimiser, learning-rate schedule and accuracy metrics.

    Speed switches live in two places: here ``channels_last`` and ``compile``; in the Trainer
    ``precision`` (``bf16-mixed``: bf16 autocast with fp32 weights, on Ampere+ GPUs and on
    CPUs with bf16 instructions, where a ResNet-50 training step ran ~2x faster) and
    ``benchmark`` (cuDNN autotuning; needs ``deterministic: false``).

    Args:
        model: a name from ``moderncnn.list_models()`` (built with ``create_model``) or, from
            Python, an ``nn.Module`` (then not saved in the checkpoint's hyperparameters).
        num_classes: classes to predict (the CLI takes it from the data module).
        in_chans: image channels (the CLI takes it from the data module).
        model_kwargs: more keyword arguments for the model's entry point (widths, depths, ...).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: peak learning rate (per optimiser step) for one device's batch.
        lr_scaling: how ``lr`` grows with the number of processes in distributed training
            (devices x nodes, each with its own ``batch_size`` images, so the global batch is
            that many times larger): ``"none"``; ``"linear"``, lr x processes (Goyal et al.
            2017, with their warm-up); ``"sqrt"``, lr x sqrt(processes) (Krizhevsky 2014;
            often better for Adam).
        momentum: SGD momentum (Adam/AdamW use it as beta1).
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty coefficient (decoupled for AdamW).
        no_decay_bn_bias: no weight decay on BatchNorm parameters and biases (Goyal et al. 2017,
            section 5.1: decaying them only limits the scale-invariant layers' freedom).
        scheduler: ``"onecycle"`` (Smith & Topin 2018), ``"cosine"`` (linear warm-up, then
            cosine to zero; Loshchilov & Hutter 2017), ``"step"`` (x ``gamma`` every
            ``step_size`` epochs), ``"multistep"`` (x ``gamma`` at each of ``milestones``; the
            ResNet and DenseNet papers' schedule) or ``"none"`` (constant).
        warmup_epochs: epochs (fractions allowed) of linear warm-up to ``lr``; for one-cycle,
            the length of its rising phase.
        step_size: epochs between learning-rate drops of the ``"step"`` schedule.
        gamma: factor of each ``"step"`` or ``"multistep"`` drop.
        milestones: where the ``"multistep"`` drops fall, as fractions of the run (None:
            ``[0.5, 0.75]``, both papers': He et al. 2016 at 32k and 48k of 64k iterations,
            Huang et al. 2017 at 50% and 75% of the epochs).
        scheduler_interval: update the learning rate after every ``"step"`` or ``"epoch"``.
        label_smoothing: probability mass spread over all classes in the target (Szegedy et al.
            2016, section 7); 0 is plain cross-entropy.
        aux_loss_weight: weight of each auxiliary head's loss (GoogLeNet, Inception v3), used
            in training only: loss = main + weight * sum(aux). 0.3 as in Szegedy et al. 2015.
        channels_last: keep weights and images in channels-last (NHWC) memory order, which
            cuDNN's tensor-core convolutions need; the numbers are the same. ``"auto"``: on when
            the Trainer runs on CUDA; on a CPU it helps thin networks (quickstart: ~1.2-1.8x)
            but slowed a full-width ResNet-18 down (0.6x), so there it is your choice.
        compile: run the network through ``torch.compile`` (fuses elementwise ops into the
            convolutions' neighbours; worth it for long GPU runs, the first steps are slow
            while it compiles). If compiling fails, a warning says why and training goes on
            in eager mode.
        mixup_alpha: MixUp (Zhang et al. 2018) of each training batch on its device, with
            Beta(alpha, alpha) mixing weights (1.0 is usual; 0: off; with ``cutmix_alpha``
            too: one of the two per batch). The loss takes the soft targets; train accuracy
            is counted against each mixed image's dominant label. Helps long runs (tens of
            epochs); on a few epochs it mostly slows learning.
        cutmix_alpha: CutMix (Yun et al. 2019), likewise: a pasted rectangle instead of a blend.
        tta: test-time augmentation for ``test`` and ``predict``: the mean probabilities over
            the image and its views, ``hflip`` (mirror) and ``shift`` (two 2-px shifts). A few
            tenths of a point for a cost of 2-4x the test time; validation stays plain.
        curve_every_n_steps: also log the training loss and accuracy averaged over each
            window of this many optimiser steps (``train_loss_window``, ``train_acc_window``
            in ``metrics.csv``, at the window's last step): learning curves against steps, as
            the ResNet paper's Fig. 6. 0: only the per-epoch averages.
        class_names: the data's class names, saved so predictions can be named (CLI-linked).
        preprocess: the data's evaluation resize and normalisation, saved for prediction on
            image files (``{"image_size", "resize_size", "mean", "std"}``; CLI-linked).
    """

    def __init__(
        self,
        model: str | nn.Module = "resnet18_cifar",
        num_classes: int = 10,
        in_chans: int = 3,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: Optimizer = "sgd",
        lr: float = 0.1,
        lr_scaling: LRScaling = "none",
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        no_decay_bn_bias: bool = True,
        scheduler: Scheduler = "onecycle",
        warmup_epochs: float = 1.0,
        step_size: int = 30,
        gamma: float = 0.1,
        milestones: list[float] | None = None,
        scheduler_interval: Interval = "step",
        label_smoothing: float = 0.0,
        aux_loss_weight: float = 0.3,
        channels_last: bool | Literal["auto"] = "auto",
        compile: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        tta: list[str] | None = None,
        curve_every_n_steps: int = 0,
        class_names: list[str] | None = None,
        preprocess: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        _choice("optimizer", optimizer, ("sgd", "adam", "adamw"))
        _choice("scheduler", scheduler, ("onecycle", "cosine", "step", "none", "multistep"))
        _choice("scheduler_interval", scheduler_interval, ("step", "epoch"))
        _choice("lr_scaling", lr_scaling, ("none", "linear", "sqrt"))
        numbers = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        numbers |= {"warmup_epochs": warmup_epochs, "gamma": gamma}
        numbers |= {"label_smoothing": label_smoothing, "aux_loss_weight": aux_loss_weight}
        numbers |= {"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha}
        for name, value in numbers.items():
            _check(_finite(value), name, value, f"a finite number (at most {_FLOAT32_MAX:.3g})")
        integers = {"step_size": step_size, "num_classes": num_classes}
        integers["curve_every_n_steps"] = curve_every_n_steps
        for name, value in integers.items():
            _check(isinstance(value, int) and not isinstance(value, bool), name, value, "an int")
        _check(lr > 0, "lr", lr, "> 0")
        _check(0 <= momentum < 1, "momentum", momentum, "in [0, 1)")
        _check(weight_decay >= 0, "weight_decay", weight_decay, ">= 0")
        _check(warmup_epochs >= 0, "warmup_epochs", warmup_epochs, ">= 0")
        _check(step_size >= 1, "step_size", step_size, ">= 1 (epochs)")
        _check(0 < gamma <= 1, "gamma", gamma, "in (0, 1]")
        fractions = isinstance(milestones, list) and all(
            _finite(m) and 0 < m < 1 for m in milestones
        )
        in_order = fractions and milestones == sorted(set(milestones))
        _check(milestones is None or in_order, "milestones", milestones,
               "null or increasing fractions of the run in (0, 1), e.g. [0.5, 0.75]")  # fmt: skip
        _check(curve_every_n_steps >= 0, "curve_every_n_steps", curve_every_n_steps, ">= 0")
        _check(0 <= label_smoothing < 1, "label_smoothing", label_smoothing, "in [0, 1)")
        _check(aux_loss_weight >= 0, "aux_loss_weight", aux_loss_weight, ">= 0")
        _check(mixup_alpha >= 0, "mixup_alpha", mixup_alpha, ">= 0 (0: off)")
        _check(cutmix_alpha >= 0, "cutmix_alpha", cutmix_alpha, ">= 0 (0: off)")
        check_tta(tta, "model.tta")
        _check(num_classes >= 2, "num_classes", num_classes, ">= 2")
        _check(in_chans >= 1, "in_chans", in_chans, ">= 1")
        cl_ok = isinstance(channels_last, bool) or channels_last == "auto"
        _check(cl_ok, "channels_last", channels_last, "true, false or 'auto'")
        if class_names is not None:
            n = len(class_names)
            _check(n == num_classes, "class_names", class_names, f"{num_classes} names, not {n}")
        self.num_classes = num_classes
        self.mixer = batch_mixer(mixup_alpha, cutmix_alpha, num_classes)
        model_kwargs = dict(model_kwargs or {})
        if isinstance(model, str):  # recorded in full: the checkpoint rebuilds this network
            model_kwargs = _with_weights_card(model, in_chans, model_kwargs)
            if "model_kwargs" in self.hparams:
                self.hparams.model_kwargs = model_kwargs
        self.model = self._build_model(model, num_classes, in_chans, model_kwargs)
        # "auto" stays NCHW until setup() learns the Trainer's device.
        self._set_memory_format(channels_last is True)
        # The compiled network (set in configure_model), held as a function rather than a
        # submodule, so that the state dict keeps its plain `model.` keys.
        self.compiled_forward: Callable[[Tensor], Any] | None = None
        self.eager_only = False

        self.train_metrics = self._metrics("train")
        self.val_metrics = self._metrics("val")
        self.test_metrics = self._metrics("test")
        # The training curve against steps: loss and accuracy over the current window.
        self.window_loss, self.window_acc = MeanMetric(), MeanMetric()
        self._window_logged_at = -1
        # Rows: true class, columns: predicted; read by the confusion-matrix callback after test.
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    @property
    def card(self) -> ModelCard:
        """What this model is (architecture, arguments, classes, preprocessing), as one card.

        Written into every checkpoint as its ``model_card`` entry, which ``moderncnn.load_model``,
        ``predict``, ``export`` and ``features --weights`` read.
        """
        return ModelCard.from_hparams(self.hparams, "ImageClassifier")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A Path among the model's or the data module's arguments (weights=, data_dir=) would be
        # a pickled object in the file, which weights_only=True reading refuses: keep text.
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = paths_as_text(checkpoint[key])
        if isinstance(self.hparams.get("model"), str):  # a Python module has no card to write
            checkpoint["model_card"] = self.card.to_dict()

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifier:
        """Rebuild a trained classifier from a checkpoint, never running pickled code.

        Lightning's own loader unpickles an ``http(s)://`` checkpoint (and any file when
        ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set) with ``weights_only=False``; this one
        reads tensors and plain containers only (``torch.load(weights_only=True)``), downloading
        an ``https://`` URL into the weights cache first. ``kwargs`` override saved arguments.
        """
        if hparams_file is not None:
            raise ConfigError("hparams_file is not supported: the checkpoint holds its arguments")
        path = str(checkpoint_path)
        if "://" in path:
            path = str(cached_download(path))
        checkpoint = read_checkpoint(path)
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not isinstance(hparams, dict) or "state_dict" not in checkpoint:
            raise ConfigError(f"{path} is not a Lightning checkpoint of an ImageClassifier")
        kwargs = {**hparams, **kwargs}
        # The state dict replaces every pretrained tensor: the file (or download) a fine-tuning
        # run started from is not needed to rebuild it.
        model_kwargs = dict(kwargs.get("model_kwargs") or {})
        model_kwargs.pop("weights", None)
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs = {k: v for k, v in kwargs.items() if k in known} | {"model_kwargs": model_kwargs}
        module = cls(**kwargs)
        module.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
        if map_location is not None:
            module.to(map_location)
        return module.eval()

    def _set_memory_format(self, channels_last: bool) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)

    def setup(self, stage: str) -> None:
        """Picks the memory format for the Trainer's device; records the data's names and transform.

        Class names and transform are recorded only when the CLI did not link them.
        """
        device = self.trainer.strategy.root_device.type
        if self.hparams.channels_last == "auto":
            self._set_memory_format(device == "cuda")
        elif self.hparams.channels_last is True and device == "cpu":
            # A crash (not an error) in some torch builds' CPU kernels: checked in a subprocess,
            # for the kernels this run's precision uses.
            bf16 = "bf16" in str(self.trainer.precision)
            self._set_memory_format(channels_last_is_safe(bf16=bf16))
        data = self.trainer.datamodule
        if data is None:
            return
        classes = getattr(data, "num_classes", None)
        if isinstance(classes, int) and classes != self.num_classes:
            raise ConfigError(
                f"model.num_classes is {self.num_classes} but the data "
                f"({type(data).__name__}) has {classes} classes; leave model.num_classes out "
                "of the config (the CLI takes it from the data) or make them agree"
            )
        names = getattr(data, "class_names", None)
        if self.hparams.class_names is None and names and len(names) == self.num_classes:
            self.hparams.class_names = list(names)
        if self.hparams.preprocess is None:
            self.hparams.preprocess = preprocess_of(data)
        self._set_example_input()

    def _set_example_input(self) -> None:
        """One blank image of the size the network sees: Lightning's model summary runs it
        through the network to show each layer's input and output shape and FLOPs (without it,
        every run printed "Total FLOPs: 0", issue 24)."""
        size = (self.hparams.preprocess or {}).get("image_size")
        if self.example_input_array is None and isinstance(size, int):
            self.example_input_array = torch.zeros(1, self.hparams.in_chans, size, size)

    @staticmethod
    def _build_model(
        model: str | nn.Module, num_classes: int, in_chans: int, model_kwargs: dict[str, Any]
    ) -> nn.Module:
        if isinstance(model, nn.Module):
            if model_kwargs:
                raise ConfigError(
                    f"model_kwargs {model_kwargs!r} apply to a model name, not an nn.Module; "
                    "pass them to the module's constructor instead"
                )
            return model
        if not isinstance(model, str):
            raise ConfigError(
                f"model.model must be a registered name (`moderncnn models`) or an nn.Module, "
                f"got {model!r}"
            )
        check_model_name(model)  # UnknownModelError that suggests close names
        check_model_kwargs(model_kwargs)  # sizes that would hang or exhaust memory
        try:
            return create_model(model, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
        except (TypeError, RuntimeError) as err:  # a number where a list belongs, no memory
            raise ConfigError(
                f"model.model_kwargs {model_kwargs!r} do not fit {model}: {err}"
            ) from err

    def configure_model(self) -> None:
        """Compiles the network when ``compile=True``; falls back to eager if that fails."""
        if not self.hparams.compile or self.compiled_forward is not None or self.eager_only:
            return
        try:
            # The bound __call__ of the compiled wrapper: it shares the parameters (and hooks).
            self.compiled_forward = torch.compile(self.model).__call__
        except Exception as err:  # no compiler backend for this platform or Python, ...
            self._compile_failed(err)

    def _compile_failed(self, err: Exception) -> None:
        rank_zero_warn(
            f"torch.compile failed ({type(err).__name__}: {err}); training goes on in eager "
            "mode (set model.compile: false to silence this)"
        )
        self.compiled_forward = None
        self.eager_only = True  # a later configure_model (test after fit) does not retry

    def run_model(self, images: Tensor) -> Any:
        """The network's output: compiled when it compiled, else eager.

        ``torch.compile`` compiles lazily, at the first call: an error there (a missing C++
        compiler, an unsupported op) also falls back to eager mode.
        """
        images = images.contiguous(memory_format=self.memory_format)
        if self.compiled_forward is not None:
            try:
                return self.compiled_forward(images)
            except Exception as err:
                self._compile_failed(err)
        try:
            return self.model(images)
        except RuntimeError as err:  # a raw shape error deep in the network
            message = too_small_message(self.model, self.hparams.get("model"), images)
            if message is None:
                raise
            raise ConfigError(message) from err

    def _metrics(self, stage: Stage) -> MetricCollection:
        # average="micro": the fraction of images classified correctly (torchmetrics' default,
        # "macro", would average the per-class accuracies instead).
        metrics = {"acc": MulticlassAccuracy(self.num_classes, average="micro")}
        if self.num_classes >= TOP5_MIN_CLASSES:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{stage}_")

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the main classifier, whatever mode the model is in."""
        out = self.run_model(x)
        return out[0] if isinstance(out, tuple) else out

    def loss(self, output: Tensor | tuple[Tensor, ...], target: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the main logits plus ``aux_loss_weight`` x each aux head's; and logits.

        ``output`` is the model's: a plain tensor, or (training mode, aux heads) a NamedTuple
        whose first field is the main logits.
        """
        total, _, logits = self._losses(output, target)
        return total, logits

    def _losses(
        self, output: Tensor | tuple[Tensor, ...], target: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The loss to minimise, the main head's alone (None without aux heads), the logits."""
        smoothing = self.hparams.label_smoothing
        logits, aux = (output[0], output[1:]) if isinstance(output, tuple) else (output, ())
        main = F.cross_entropy(logits, target, label_smoothing=smoothing)
        total, has_aux = main, False
        for aux_logits in aux:
            if aux_logits is not None:
                aux_loss = F.cross_entropy(aux_logits, target, label_smoothing=smoothing)
                total, has_aux = total + self.hparams.aux_loss_weight * aux_loss, True
        return total, main if has_aux else None, logits

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> tuple[Tensor, Tensor]:
        """The loss to minimise and the logits; logs ``{stage}_loss`` and the metrics.

        ``{stage}_loss`` is always the main head's, so train and val curves compare like with
        like; with aux heads (GoogLeNet, Inception v3) the aux-weighted loss that is minimised
        is logged too, as ``train_loss_total`` (issue 24).
        """
        images, target = batch
        main = None
        if stage == "train" and self.mixer is not None:
            images, soft = self.mixer(images, target)
            loss, main, logits = self._losses(self.run_model(images), soft)
            target = soft.argmax(1)  # accuracy against each mixed image's dominant label
        elif stage == "test" and self.hparams.get("tta"):
            logits = tta_logits(self, images, self.hparams.tta)
            loss = F.nll_loss(logits, target)  # the logits are log-probabilities
        else:
            loss, main, logits = self._losses(self.run_model(images), target)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, target)
        # on_epoch: one value per epoch, averaged over images (batch_size weights the mean).
        kwargs = {"on_step": False, "on_epoch": True, "batch_size": len(target)}
        # sync_dist: under DDP the epoch loss is averaged over every process's images (the
        # torchmetrics metrics below sync their counts themselves); a no-op in one process.
        shown = loss if main is None else main
        self.log(f"{stage}_loss", shown, prog_bar=stage != "test", sync_dist=True, **kwargs)
        if main is not None:
            self.log(f"{stage}_loss_total", loss, sync_dist=True, **kwargs)
        self.log_dict(metrics, prog_bar=stage != "test", **kwargs)
        return loss, logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._step(batch, "train")
        if self.hparams.get("curve_every_n_steps"):
            self._update_window(loss, logits, batch[1] if self.mixer is None else None)
        return loss

    def _update_window(self, loss: Tensor, logits: Tensor, target: Tensor | None) -> None:
        """Adds a batch to the current window (accuracy: only without MixUp/CutMix, whose
        mixed labels the batch no longer holds)."""
        n = logits.shape[0]
        self.window_loss.update(loss.detach().float(), weight=n)
        if target is not None:
            correct = (logits.detach().argmax(1) == target).float()
            self.window_acc.update(correct)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs the window's means at its last step, straight to the loggers: Lightning's own
        step logging writes only every ``trainer.log_every_n_steps``."""
        every, step = self.hparams.get("curve_every_n_steps"), self.global_step
        # (With gradient accumulation several batches end at one optimiser step.)
        if not every or not step or step % every or step == self._window_logged_at:
            return
        self._window_logged_at = step
        metrics = {"train_loss_window": self.window_loss.compute().item()}
        if self.window_acc.update_count:
            metrics["train_acc_window"] = self.window_acc.compute().item()
        metrics["epoch"] = self.current_epoch
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step - 1)
        self.window_loss.reset()
        self.window_acc.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Updates the test metrics; returns the logits (the top-loss report reads them)."""
        _, logits = self._step(batch, "test")
        self.test_confusion.update(logits, batch[1])
        return logits.detach()

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities (N x num_classes) of a batch of images (or (images, labels))."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        if self.hparams.get("tta"):
            return tta_logits(self, images, self.hparams.tta).exp()
        return self(images).float().softmax(dim=1)  # float: bf16 autocast gives bf16 logits

    # -- optimisation ---------------------------------------------------------------------

    def _param_groups(self) -> list[dict[str, Any]]:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return weight_decay_groups(
            trainable, self.hparams.weight_decay, self.hparams.no_decay_bn_bias
        )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self._param_groups()
        lr = self.scaled_lr()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0
            )
        else:
            optimizer_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
            optimizer = optimizer_class(groups, lr=lr, betas=(hp.momentum, 0.999))
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        scheduler = self._scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": hp.scheduler_interval},
        }

    def scaled_lr(self) -> float:
        """``lr`` scaled for the number of training processes as ``lr_scaling`` says."""
        hp = self.hparams
        try:
            processes = self.trainer.world_size
        except RuntimeError:  # not attached to a Trainer
            processes = 1
        factor = {"none": 1.0, "linear": processes, "sqrt": math.sqrt(processes)}
        lr = hp.lr * factor[hp.lr_scaling]
        if lr != hp.lr:
            rank_zero_info(f"lr {hp.lr:g}, {hp.lr_scaling}-scaled for {processes} processes: {lr}")
        return lr

    def on_train_start(self) -> None:
        """Refuses to resume a schedule planned for a different length of training."""
        scheduler = self.lr_schedulers()
        if not isinstance(scheduler, OneCycleLR | LambdaLR):
            return
        planned = getattr(scheduler, "total_steps", None)
        if isinstance(scheduler, LambdaLR):
            planned = getattr(scheduler.lr_lambdas[0], "total", None)
        total, _ = self._schedule_length()
        if planned is not None and planned != total:
            raise ConfigError(
                f"the checkpoint's {self.hparams.scheduler!r} schedule spans {planned} "
                f"{self.hparams.scheduler_interval}s but this run has {total}: resume with the "
                "trainer limits (max_epochs, limit_train_batches, batch size) it was started with"
            )

    def _schedule_length(self) -> tuple[int, float]:
        """Scheduler updates in the whole run, and per epoch (from the Trainer's limits)."""
        trainer = self.trainer
        if not math.isfinite(trainer.estimated_stepping_batches):
            raise ConfigError(
                f"the {self.hparams.scheduler!r} schedule needs a run of known length, but "
                "trainer.max_epochs and trainer.max_steps are both -1 (no limit); set one, or "
                "use scheduler 'step' or 'none'"
            )
        total_steps = int(trainer.estimated_stepping_batches)
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            steps_per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        else:  # an iterable dataset of unknown length: spread max_steps over max_epochs
            steps_per_epoch = max(1, total_steps // max(trainer.max_epochs or 1, 1))
        if self.hparams.scheduler_interval == "step":
            return total_steps, steps_per_epoch
        return max(1, math.ceil(total_steps / steps_per_epoch)), 1

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        hp = self.hparams
        total, per_epoch = self._schedule_length()
        warmup = round(hp.warmup_epochs * per_epoch)
        if hp.scheduler == "step":  # open-ended: the same schedule however long the run
            every = round(hp.step_size * per_epoch)
            return LambdaLR(optimizer, _WarmupStep(warmup, every, hp.gamma))
        if hp.scheduler == "multistep":
            drops = [round(m * total) for m in hp.get("milestones") or (0.5, 0.75)]
            return LambdaLR(optimizer, _WarmupMultiStep(warmup, drops, hp.gamma, total))
        warmup = min(warmup, total - 1)  # leave at least one update for the decay
        if hp.scheduler == "onecycle" and warmup < 2:
            # OneCycleLR divides by its rising phase's length minus one: with no warm-up to
            # speak of (warmup_epochs 0, or a run of a step or two) start at the peak instead.
            return LambdaLR(optimizer, _OneCycleDecay(total))
        if hp.scheduler == "onecycle":
            # The configured momentum is kept as is (no momentum cycling).
            return OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=total,
                pct_start=warmup / total,
                cycle_momentum=False,
            )
        return LambdaLR(optimizer, _WarmupCosine(warmup, total))


class _OneCycleDecay:
    """LR factor of a one-cycle schedule without warm-up: OneCycleLR's cosine from the peak
    down to peak / (25 x 1e4) (its default div_factor and final_div_factor) over ``total``."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int) -> float:
        progress = min(step / max(1, self.total - 1), 1.0)
        end = 1 / (25 * 1e4)
        return end + (1 - end) / 2 * (math.cos(math.pi * progress) + 1)


class _WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` updates, then half a cosine down to zero."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _WarmupStep:
    """LR factor: linear warm-up over ``warmup`` updates, then x ``gamma`` every ``every``."""

    def __init__(self, warmup: int, every: int, gamma: float) -> None:
        self.warmup, self.every, self.gamma = warmup, max(1, every), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return self.gamma ** (step // self.every)


class _WarmupMultiStep:
    """LR factor: linear warm-up over ``warmup`` updates, then x ``gamma`` at each of ``drops``
    (update counts); ``total`` is the run's length, checked on resuming."""

    def __init__(self, warmup: int, drops: list[int], gamma: float, total: int) -> None:
        self.warmup, self.drops, self.gamma, self.total = warmup, drops, gamma, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return self.gamma ** bisect.bisect_right(self.drops, step)
