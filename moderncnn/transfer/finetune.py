"""Fine-tuning a pretrained network: first the new head alone, then everything, the backbone slower.

:class:`FreezeBackbone` is a Lightning callback for :class:`~moderncnn.training.ImageClassifier`
(any LightningModule whose network is its ``model`` attribute). From YAML::

    model:
      model: resnet18
      model_kwargs: {weights: imagenet}     # or a .pth / .ckpt / .safetensors file
    trainer:
      callbacks:
        - class_path: moderncnn.transfer.finetune.FreezeBackbone
          init_args: {unfreeze_at_epoch: 2, backbone_lr_ratio: 0.1}

1. Epochs before ``unfreeze_at_epoch``: the backbone (every parameter but the classifier and
   the auxiliary heads) is frozen, and its BatchNorm layers stay in eval mode, so a freshly
   initialised head's large early gradients cannot wreck the pretrained features, and a
   small dataset's batch statistics do not replace the pretrained running statistics
   (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?", section 4.2).
2. From ``unfreeze_at_epoch``: the backbone joins the optimiser as new parameter groups whose
   learning rate is the head's times ``backbone_lr_ratio``: discriminative learning rates
   (Howard & Ruder 2018, ULMFiT, section 3.2), since pretrained layers need smaller changes.

Any network works: the head is found by ``get_classifier()`` (moderncnn models) or an attribute
``fc`` / ``classifier`` / ``head``, or named with ``head=["5"]`` (dotted names of
``named_modules()``, e.g. the last layer of an ``nn.Sequential``).

Learning-rate schedules: torch's schedulers keep one base learning rate per parameter group
(``LambdaLR``: ``base_lrs`` and ``lr_lambdas``; ``OneCycleLR``: ``initial_lr``/``max_lr``/
``min_lr`` in each group), and Lightning's ``BaseFinetuning`` does not tell them about a group
it adds: on the next step ``LambdaLR`` fails on its strict zip and ``OneCycleLR`` on a missing
key. So the new groups are registered with every scheduler of the optimiser with the same
schedule, base rates times the ratio: at every step, backbone lr = head lr x ratio. The
schedule is not restarted; the backbone joins it where it is (e.g. part-way down the cosine).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer

from moderncnn.inference.optimize import BATCH_NORMS
from moderncnn.io.errors import ConfigError
from moderncnn.training.framework_internals import set_scheduler_last_lr
from moderncnn.training.param_groups import weight_decay_groups

__all__ = ["FreezeBackbone", "split_head"]

HEAD_ATTRIBUTES = ("fc", "classifier", "head")  # looked up when there is no get_classifier()
# Per-group values that schedulers read besides "lr": scaled by the ratio, or copied.
SCALED_KEYS = ("initial_lr", "max_lr", "min_lr")
COPIED_KEYS = ("max_momentum", "base_momentum")


def split_head(
    network: nn.Module, head: list[str] | None = None
) -> tuple[list[nn.Module], list[nn.Module]]:
    """(backbone, head) of a network: the head is its classifier plus any auxiliary heads.

    ``head`` names the head's modules (as ``named_modules()`` does) instead. The backbone is
    every leaf module (or module with parameters of its own) outside the head, as
    ``BaseFinetuning.flatten_modules`` lists them.
    """
    if head is not None:
        heads = [_submodule(network, name) for name in head]
    elif hasattr(network, "get_classifier"):
        heads = [network.get_classifier()]
    else:
        found = (getattr(network, name, None) for name in HEAD_ATTRIBUTES)
        heads = [next((m for m in found if isinstance(m, nn.Module)), None)]
    if heads[0] is None:
        raise ConfigError(
            f"cannot find the classifier of {type(network).__name__}: give it a get_classifier() "
            f"method or an attribute named {' / '.join(HEAD_ATTRIBUTES)}"
        )
    if head is None and callable(getattr(network, "aux_modules", None)):
        heads += [network.get_submodule(name) for name in network.aux_modules()]
    in_head = {id(m) for module in heads for m in module.modules()}
    backbone = [m for m in BaseFinetuning.flatten_modules(network) if id(m) not in in_head]
    return backbone, heads


def _submodule(network: nn.Module, name: str) -> nn.Module:
    try:
        return network.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in network.named_modules() if n]
        raise ConfigError(
            f"head names a module {name!r} that {type(network).__name__} does not have; "
            f"give names from named_modules(), e.g. {names[-3:]}"
        ) from None


class FreezeBackbone(BaseFinetuning):
    """Trains only the head for ``unfreeze_at_epoch`` epochs, then the backbone too, slower.

    Args:
        unfreeze_at_epoch: the first epoch (0-based) in which the backbone trains; 0 trains it
            from the start (discriminative learning rates only).
        backbone_lr_ratio: backbone learning rate / head learning rate once unfrozen.
        train_bn: train the backbone's BatchNorm layers (scale, shift and running statistics)
            while it is frozen too; their parameters then stay in the head's groups and keep the
            head's learning rate. False: BatchNorm stays in eval mode until unfrozen.
        head: the head's module names (``named_modules()``) for a network whose classifier is
            not found by ``get_classifier()`` or an ``fc`` / ``classifier`` / ``head``
            attribute; None: found so, with any auxiliary heads.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int = 1,
        backbone_lr_ratio: float = 0.1,
        train_bn: bool = False,
        head: list[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(unfreeze_at_epoch, bool) or not isinstance(unfreeze_at_epoch, int):
            raise ConfigError(f"unfreeze_at_epoch must be an integer, got {unfreeze_at_epoch!r}")
        if unfreeze_at_epoch < 0:
            raise ConfigError(f"unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch!r}")
        if not 0 < backbone_lr_ratio <= 1:
            raise ConfigError(f"backbone_lr_ratio must be in (0, 1], got {backbone_lr_ratio!r}")
        if head is not None and (isinstance(head, str) or not head):
            raise ConfigError(f"head must be a non-empty list of module names, got {head!r}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_ratio = float(backbone_lr_ratio)
        self.train_bn = train_bn
        self.head = None if head is None else list(head)
        self.frozen = False

    @staticmethod
    def network(pl_module: L.LightningModule) -> nn.Module:
        """The LightningModule's network (``ImageClassifier.model``)."""
        network = getattr(pl_module, "model", None)
        if not isinstance(network, nn.Module):
            raise ConfigError(
                f"FreezeBackbone needs a LightningModule whose network is its `model` attribute "
                f"(as ImageClassifier's), got {type(pl_module).__name__}"
            )
        return network

    def backbone(self, pl_module: L.LightningModule) -> list[nn.Module]:
        """The modules that are frozen, then trained at the lower learning rate."""
        return split_head(self.network(pl_module), self.head)[0]

    # -- phase 1: frozen ------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Freezes for ``fit`` only: testing a fine-tuned model after fit must not refreeze it."""
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        """Before the optimiser is built: it then holds the head's parameters only."""
        self.freeze(self.backbone(pl_module), train_bn=self.train_bn)
        self.frozen = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Every batch, since Lightning puts the whole module back in training mode after each
        # validation run. Frozen BatchNorm then normalises with the pretrained statistics.
        if self.frozen and not self.train_bn:
            for module in self.backbone(pl_module):
                if isinstance(module, BATCH_NORMS):
                    module.eval()

    # -- phase 2: unfrozen ----------------------------------------------------------------

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """At ``unfreeze_at_epoch`` (or later, after resuming): unfreeze, add param groups."""
        if not self.frozen or epoch < self.unfreeze_at_epoch:
            return
        backbone = self.backbone(pl_module)
        self.make_trainable(backbone)
        for module in backbone:
            if isinstance(module, BATCH_NORMS):
                module.train(pl_module.training)
        self.frozen = False
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for m in backbone for p in m.parameters(recurse=False)]
        new = [p for p in params if id(p) not in in_optimizer]
        if not new:  # resumed after the unfreeze: the checkpoint's groups already hold them
            return
        ratio = self.backbone_lr_ratio
        for group in self._param_groups(pl_module, new, optimizer.param_groups[0]):
            optimizer.add_param_group(group)
        self._extend_schedulers(pl_module.trainer, optimizer)
        head_lr, count = optimizer.param_groups[0]["lr"], sum(p.numel() for p in new)
        rank_zero_info(
            f"FreezeBackbone: epoch {epoch}: the backbone's {count:,} parameters train too, at "
            f"lr {head_lr * ratio:.3g} (head lr {head_lr:.3g} x {ratio:g})"
        )

    def _param_groups(
        self, pl_module: L.LightningModule, params: list[nn.Parameter], reference: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The backbone's groups: ImageClassifier's split of weights with and without decay."""
        hparams = getattr(pl_module, "hparams", {})
        decay = hparams.get("weight_decay", reference.get("weight_decay", 0.0))
        split = hparams.get("no_decay_bn_bias", False)
        groups = weight_decay_groups(params, decay, split)
        for group in groups:
            group["lr"] = reference["lr"] * self.backbone_lr_ratio
            for key in SCALED_KEYS:
                if key in reference:
                    group[key] = reference[key] * self.backbone_lr_ratio
            group.update({key: reference[key] for key in COPIED_KEYS if key in reference})
        return [group for group in groups if group["params"]]

    def _extend_schedulers(self, trainer: L.Trainer, optimizer: Optimizer) -> None:
        """Gives every scheduler of ``optimizer`` one entry per group it does not know yet."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is not optimizer:
                continue
            base_lrs = getattr(scheduler, "base_lrs", None)
            if base_lrs is None:
                continue
            for _ in range(len(optimizer.param_groups) - len(base_lrs)):
                base_lrs.append(base_lrs[0] * self.backbone_lr_ratio)
                lambdas = getattr(scheduler, "lr_lambdas", None)  # LambdaLR, MultiplicativeLR
                if lambdas is not None:
                    lambdas.append(lambdas[0])
                min_lrs = getattr(scheduler, "min_lrs", None)  # ReduceLROnPlateau
                if min_lrs is not None:
                    min_lrs.append(min_lrs[0] * self.backbone_lr_ratio)
            set_scheduler_last_lr(scheduler, [group["lr"] for group in optimizer.param_groups])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resuming after the unfreeze: the optimiser gets back the backbone's groups (in
        ``BaseFinetuning``), and its schedulers the entries their saved state will fill."""
        super().on_fit_start(trainer, pl_module)
        for optimizer in trainer.optimizers:
            self._extend_schedulers(trainer, optimizer)
