"""Linear probe: a classifier trained on cached, frozen features -- seconds, not hours.

How good is a backbone's representation for a new dataset? Train only a linear layer on its
frozen, globally pooled features (the linear evaluation protocol of Kornblith et al., 2019,
"Do Better ImageNet Models Transfer Better?"). Features are standardised with the training
split's mean and std first, so one learning rate suits every backbone. ``hidden`` swaps the
linear layer for a one-hidden-layer MLP.

The schedule comes from the data: by default a linear probe is fitted to convergence with
full-batch L-BFGS and an L2 penalty that shrinks with the number of training images n (as
scikit-learn's ``LogisticRegression`` fits, and Kornblith et al. fit theirs), since the cached
features fit in memory. A fixed number of
minibatch epochs underfits a small folder (issue 24: 100 epochs x 3 steps gave 53% train and
val accuracy on a few dozen photos per class). Given ``epochs`` or ``lr``, or for an MLP,
AdamW runs over minibatches, by default for at least ``MIN_STEPS`` steps.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from moderncnn.inference.probe import PROBE_HEAD, PROBE_INFO, ProbeHead, load_probe, save_probe
from moderncnn.io.card import ModelCard
from moderncnn.io.errors import DataError
from moderncnn.viz import plot_confusion_matrix
from moderncnn.viz._figure import figures_not_shown

from .cache import FeatureCache

__all__ = [
    "ProbeConfig",
    "ProbeHead",
    "ProbeResult",
    "evaluate",
    "load_probe",
    "probe_card",
    "probe",
    "show_probe",
    "train_probe",
]

HEAD_FILE, INFO_FILE = PROBE_HEAD, PROBE_INFO
SMALL_STEP = 2**25  # multiply-adds per training step below which one thread is fastest
MIN_EPOCHS, MIN_STEPS = 100, 3000  # AdamW's default schedule: whichever is longer
LBFGS_ITERATIONS = 200  # at most; it stops earlier once the loss stops changing
# L-BFGS's L2 penalty on the mean loss is L2_PER_IMAGE / n (scikit-learn's C = 1 / L2_PER_IMAGE on
# the summed loss): less data, more regularisation. On 40 Fashion-MNIST images per class,
# random-conv features: 1/n overfits (train 97%, val 69%), 40/n underfits (77%, 67%), 4/n fits
# (91%, 71%; AdamW for 1,000 epochs: 90%, 70%).
L2_PER_IMAGE = 4.0
UNDERFIT_GAP = 0.02  # train accuracy within this of val accuracy (and < 99%): underfitting


@dataclass
class ProbeResult:
    """A trained probe, its metrics per split and where it was saved."""

    head: ProbeHead
    metrics: dict[str, dict[str, Any]]
    out: Path | None


def _splits(
    cache: FeatureCache, val_fraction: float, seed: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Train/val/test features and labels; without a val split, a seeded part of train."""
    source = "train" if "train" in cache.splits else "all"
    if source not in cache.splits:
        raise DataError(f"{cache.root} has no 'train' or 'all' split to train on: {cache.splits}")
    data = {s: (cache.features(s), cache.labels(s)) for s in cache.splits if s != "all"}
    data[source] = (cache.features(source), cache.labels(source))
    if (data[source][1] < 0).any():
        raise DataError(f"{cache.root}: the images are unlabelled (no class folders)")
    if "val" not in data and val_fraction > 0:
        x, y = data.pop(source)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(len(y) * val_fraction))
        data["val"] = (x[order[:n_val]], y[order[:n_val]])
        data[source] = (x[order[n_val:]], y[order[n_val:]])
    if source == "all":
        data["train"] = data.pop("all")
    return data


def _confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    index = target * num_classes + pred
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


@torch.no_grad()
def evaluate(logits: Tensor, labels: Tensor, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, top-5 accuracy (more than 5 classes), per-class accuracy, confusion matrix."""
    num_classes = len(class_names)
    pred = logits.argmax(1)
    confusion = _confusion(pred, labels, num_classes)
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    metrics: dict[str, Any] = {
        "images": len(labels),
        "accuracy": (pred == labels).float().mean().item(),
        "per_class_accuracy": dict(zip(class_names, per_class.tolist(), strict=True)),
        "confusion_matrix": confusion.tolist(),
    }
    if num_classes > 5:
        top5 = logits.topk(5, dim=1).indices
        metrics["top5_accuracy"] = (top5 == labels[:, None]).any(1).float().mean().item()
    return metrics


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is trained (saved beside it in probe.json)."""

    hidden: int | None = None  # MLP hidden width; None: linear
    epochs: int | None = None  # AdamW: passes over the training features; None: L-BFGS
    lr: float | None = None  # AdamW's peak learning rate, cosine-decayed to 0; None: L-BFGS
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay, or L-BFGS's L2 penalty
    batch_size: int = 256  # AdamW: features per step
    val_fraction: float = 0.2  # held out of train when the cache has no val split
    seed: int = 0  # initialisation, shuffling and the held-out split
    solver: str = "adamw"  # "lbfgs": full batch, to convergence; "adamw": minibatches


def _schedule(
    hidden: int | None,
    epochs: int | None,
    lr: float | None,
    weight_decay: float | None,
    batch_size: int,
    n_train: int,
) -> dict[str, Any]:
    """The solver and its settings: the user's choices, the rest chosen from the data."""
    if hidden is None and epochs is None and lr is None:
        l2 = L2_PER_IMAGE / max(n_train, 1) if weight_decay is None else weight_decay
        return {"solver": "lbfgs", "epochs": None, "lr": None, "weight_decay": l2}
    steps_per_epoch = math.ceil(n_train / batch_size)
    if epochs is None:  # enough steps for a few dozen images per class, too
        epochs = max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    return {
        "solver": "adamw",
        "epochs": epochs,
        "lr": 1e-3 if lr is None else lr,
        "weight_decay": 1e-4 if weight_decay is None else weight_decay,
    }


def _fit_lbfgs(head: ProbeHead, x: Tensor, y: Tensor, l2: float) -> None:
    """Full-batch L-BFGS on the L2-penalised cross-entropy (the biases are not penalised)."""
    weights = [p for name, p in head.named_parameters() if name.endswith("weight")]
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=LBFGS_ITERATIONS,
        history_size=20,
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(x), y) + 0.5 * l2 * sum(w.square().sum() for w in weights)
        loss.backward()
        return loss

    head.train()
    optimizer.step(closure)
    head.eval()


def _train(head: ProbeHead, x: Tensor, y: Tensor, config: ProbeConfig) -> None:
    """L-BFGS on all features, or AdamW with a cosine schedule over minibatches."""
    threads = torch.get_num_threads()
    # A small step costs less arithmetic than thread start-up and synchronisation: on a busy
    # 2-core machine, 2 threads trained the Fashion-MNIST pixel probe 30x slower than 1.
    batch = len(y) if config.solver == "lbfgs" else config.batch_size
    if batch * sum(p.numel() for p in head.parameters()) < SMALL_STEP:
        torch.set_num_threads(1)
    try:
        if config.solver == "lbfgs":
            _fit_lbfgs(head, x, y, config.weight_decay)
        else:
            _fit_adamw(head, x, y, config)
    finally:
        torch.set_num_threads(threads)


def _fit_adamw(head: ProbeHead, x: Tensor, y: Tensor, config: ProbeConfig) -> None:
    """AdamW with a cosine schedule over shuffled minibatches of the training features."""
    assert config.epochs is not None and config.lr is not None
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    head.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(y), generator=generator).split(config.batch_size):
            loss = F.cross_entropy(head(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    head.eval()


def _warn_if_underfit(metrics: dict[str, dict[str, Any]], config: ProbeConfig) -> None:
    """Train accuracy no better than val accuracy: the head, not the features, is the limit."""
    if "val" not in metrics:
        return
    train, val = metrics["train"]["accuracy"], metrics["val"]["accuracy"]
    if train < 0.99 and train - val < UNDERFIT_GAP:
        hint = (
            "train longer (--epochs) or with a larger --lr"
            if config.solver == "adamw"
            else "try a smaller --weight-decay, or an MLP head (--mlp HIDDEN)"
        )
        warnings.warn(
            f"the probe may underfit: train accuracy {train:.1%} is within "
            f"{UNDERFIT_GAP:.0%} of val accuracy {val:.1%}; {hint}",
            stacklevel=3,
        )


def train_probe(
    cache: FeatureCache | str | Path,
    *,
    hidden: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    seed: int = 0,
    out: str | Path | None = None,
) -> ProbeResult:
    """Train a probe on a feature cache, evaluate it on every split, save it to ``out``.

    Args:
        cache: a :class:`FeatureCache` or its folder.
        hidden: width of an MLP's hidden layer; None trains a linear probe.
        epochs: AdamW's passes over the training features; None: L-BFGS for a linear probe,
            else at least ``MIN_EPOCHS`` and ``MIN_STEPS`` steps.
        lr: AdamW's peak learning rate (cosine-decayed to 0); None: L-BFGS for a linear probe,
            else 1e-3. Giving ``epochs`` or ``lr`` trains with AdamW.
        weight_decay: L-BFGS's L2 penalty on the mean loss (None: ``L2_PER_IMAGE`` / number
            of training images) or AdamW's decoupled weight decay (None: 1e-4).
        batch_size: AdamW's features per step.
        val_fraction: held out of train for validation when the cache has no val split.
        seed: seeds the initialisation, the shuffling and the held-out split.
        out: folder for the head, its metadata and the confusion-matrix plot; None: not saved.
    """
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    torch.manual_seed(seed)
    data = _splits(cache, val_fraction, seed)
    x_train, y_train = data["train"]
    # Standardise with the training split's statistics. The floor is relative, since an
    # untrained backbone's features can be ~1e-12; (nearly) constant channels are divided by 1.
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
    head = ProbeHead(x_train.shape[1], len(cache.class_names), hidden, mean, std)
    schedule = _schedule(hidden, epochs, lr, weight_decay, batch_size, len(y_train))
    config = ProbeConfig(
        hidden, batch_size=batch_size, val_fraction=val_fraction, seed=seed, **schedule
    )
    _train(head, x_train, y_train, config)
    with torch.no_grad():
        metrics = {s: evaluate(head(x), y, cache.class_names) for s, (x, y) in data.items()}
    _warn_if_underfit(metrics, config)
    out_dir = None if out is None else _save(Path(out), head, cache, metrics, asdict(config))
    return ProbeResult(head, metrics, out_dir)


def probe_card(
    cache: FeatureCache, head: ProbeHead, hidden: int | None, metrics: dict
) -> ModelCard:
    """The probe's card: its classes and head, on the backbone card its features came from."""
    if "card" not in cache.meta:
        raise DataError(
            f"feature cache {cache.root} was made before caches recorded their backbone's card; "
            "run `moderncnn features` again"
        )
    parent = ModelCard.from_dict(cache.meta["card"], f"{cache.root} (manifest)")
    split = "test" if "test" in metrics else "val" if "val" in metrics else "train"
    return ModelCard(
        architecture="mlp_probe" if hidden else "linear_probe",
        num_classes=len(cache.class_names),
        in_chans=parent.in_chans,
        class_names=tuple(cache.class_names),
        preprocess=parent.preprocess,
        kind="probe",
        parent=parent,
        head={"num_features": head.mean.numel(), "hidden": hidden, "stage": cache.meta["stage"]},
        source={"artifact": "probe", "feature_cache": str(cache.root.resolve())},
        metrics={f"{split}_acc": metrics[split]["accuracy"]},
    )


def _save(out: Path, head: ProbeHead, cache: FeatureCache, metrics: dict, config: dict) -> Path:
    card = probe_card(cache, head, config["hidden"], metrics)
    save_probe(out, head, card, config=config, metrics=metrics)
    split = "test" if "test" in metrics else "val" if "val" in metrics else "train"
    with figures_not_shown():  # a file of the probe folder, not a picture for the cell
        plot_confusion_matrix(
            metrics[split]["confusion_matrix"],
            cache.class_names,
            save=out / "confusion_matrix.png",
            title=f"linear probe on {card.parent.architecture}: {split} split",
        )
    return out


def format_report(metrics: dict[str, dict[str, Any]]) -> str:
    """A readable summary: accuracy and top-5 per split, per-class accuracy of the last split."""
    lines = []
    for split, m in metrics.items():
        top5 = f", top-5 {m['top5_accuracy']:.1%}" if "top5_accuracy" in m else ""
        lines.append(f"{split:>5}: accuracy {m['accuracy']:.1%}{top5} ({m['images']} images)")
    split = "test" if "test" in metrics else "val" if "val" in metrics else "train"
    lines.append(f"per-class accuracy ({split}):")
    lines += [
        f"  {name:<20} {acc:.1%}" for name, acc in metrics[split]["per_class_accuracy"].items()
    ]
    return "\n".join(lines)


def probe(
    cache: str | Path,
    *,
    mlp: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    out: str | Path | None = None,
) -> ProbeResult:
    """Train a linear probe (or a small MLP) on cached features and save it beside them.

    The command ``moderncnn probe``; ``train_probe`` is the same with its other choices.

    Args:
        cache: feature cache folder from moderncnn features.
        mlp: train a one-hidden-layer MLP of this width instead of a linear layer.
        epochs: train with AdamW for this many epochs (default: a linear probe is fitted to
            convergence with L-BFGS; an MLP gets a minimum number of epochs and steps).
        lr: train with AdamW at this peak learning rate.
        weight_decay: L-BFGS's L2 penalty (default 4/number of training images) or AdamW's
            weight decay (1e-4).
        batch_size: AdamW's features per step.
        seed: seeds the initialisation, the shuffling and the held-out split.
        out: output folder (default: CACHE/probe).
    """
    out = Path(out) if out else Path(cache) / "probe"
    return train_probe(
        cache, hidden=mlp, epochs=epochs, lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, seed=seed, out=out,
    )  # fmt: skip


def show_probe(result: ProbeResult, arguments: dict[str, Any]) -> int:
    """What ``moderncnn probe`` prints: the metrics of every split and where the probe is."""
    out = Path(arguments["out"]) if arguments.get("out") else Path(arguments["cache"]) / "probe"
    print(format_report(result.metrics))
    print(f"saved the probe in {out} ({HEAD_FILE}, {INFO_FILE}, confusion_matrix.png)")
    return 0
