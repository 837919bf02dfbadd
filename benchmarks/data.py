"""Training batches per second: our in-memory tensor path vs the usual per-sample PIL glue.

Ours is the real data-module code: ``CIFAR10DataModule`` / ``FashionMNISTDataModule`` keep the
training set as one uint8 N x C x H x W tensor, the DataLoader slices whole batches out of it,
and ``on_after_batch_transfer`` pad-crops, flips and normalises each batch on the device
(``BatchAugment``, airbench-style). The glue is what most training scripts do: torchvision's
own ``CIFAR10`` / ``FashionMNIST`` ``__getitem__`` (one PIL image per sample) with a
transforms-v2 pipeline RandomCrop(padding) + RandomHorizontalFlip + ToImage + ToDtype +
Normalize, collated by a DataLoader. Both yield the same normalised float batches.

CIFAR-10 is 50,000 random uint8 3x32x32 images (no download: the throughput does not depend
on the pixel values); Fashion-MNIST is the real 60,000 training images from the Debian files.

    python benchmarks/data.py            # full run: under 3 minutes on 2 cores
    python benchmarks/data.py --quick    # smoke run (one batch size, no workers): writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10, FashionMNIST, VisionDataset
from torchvision.transforms import v2

from moderncnn.data import CIFAR10DataModule, FashionMNISTDataModule
from moderncnn.data.fashion_mnist import DEBIAN_DIR
from moderncnn.data.in_memory import TensorDataModule
from moderncnn.training.run_facts import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "data.md"
GOAL = 5.0  # ours / glue, batches per second (higher is better)


class SyntheticCIFAR10(CIFAR10DataModule):
    """The CIFAR-10 data module over random images of CIFAR-10's size, so nothing is fetched."""

    def __init__(self, num_images: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_images = num_images

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0 if train else 1)
        shape = (self.num_images, 3, 32, 32)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, 10, (self.num_images,), generator=generator)


class TorchvisionCIFAR10(CIFAR10):
    """torchvision's CIFAR10 over given arrays: its own ``__getitem__``, without its files."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        VisionDataset.__init__(self, "", transform=transform)
        self.data = images.permute(0, 2, 3, 1).numpy()  # N x H x W x C, as torchvision keeps it
        self.targets = labels.tolist()


class TorchvisionFashionMNIST(FashionMNIST):
    """torchvision's FashionMNIST over given tensors: its own ``__getitem__``."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        VisionDataset.__init__(self, "", transform=transform)
        self.data, self.targets = images[:, 0], labels  # N x H x W uint8, as torchvision keeps it


def glue_transform(dm: TensorDataModule) -> v2.Compose:
    """The per-sample pipeline equivalent to the data module's default augmentation."""
    crop = dm.default_augmentations[0]["RandomCrop"]  # same size and padding as ours
    return v2.Compose(
        [
            v2.RandomCrop(crop["size"], padding=crop["padding"]),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(dm.mean, dm.std),
        ]
    )


def endless(make_loader: Callable[[], DataLoader]) -> Iterator:
    """Batches from epoch after epoch (a new iterator when one ends)."""
    loader = make_loader()
    while True:
        yield from loader


def ours_step(dm: TensorDataModule, device: torch.device) -> Callable[[], Tensor]:
    """One training batch through the data module: slice, transfer, augment + normalise."""
    batches = endless(dm.train_dataloader)

    def step() -> Tensor:
        images, labels = next(batches)
        batch = (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        return dm.on_after_batch_transfer(batch, 0)[0]

    return step


def glue_step(
    dataset: VisionDataset, batch: int, workers: int, device: torch.device
) -> Callable[[], Tensor]:
    """One training batch through a per-sample DataLoader, moved to the device."""
    pin = device.type == "cuda"

    def make_loader() -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin
        )

    batches = endless(make_loader)

    def step() -> Tensor:
        images, _ = next(batches)
        return images.to(device, non_blocking=True)

    return step


def batches_per_second(step: Callable[[], Tensor], args: argparse.Namespace) -> list[float]:
    """Batches/s of each timed round of ``args.batches`` steps, after warm-up steps."""
    for _ in range(args.warmup):  # includes starting the DataLoader workers
        step()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            out = step()
        if out.is_cuda:
            torch.cuda.synchronize()
        rates.append(args.batches / (time.perf_counter() - start))
    return rates


def check_same_batches(ours: Tensor, theirs: Tensor) -> None:
    """Both paths must give the model the same thing: shape, dtype and normalised values."""
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        raise AssertionError(f"ours {ours.dtype} {ours.shape}, glue {theirs.dtype} {theirs.shape}")
    # Different random crops of different images: only the statistics can agree.
    if abs(ours.mean().item() - theirs.mean().item()) > 0.15 or ours.min() != theirs.min():
        raise AssertionError(
            f"ours (mean {ours.mean():.3f}, min {ours.min():.3f}) and glue (mean "
            f"{theirs.mean():.3f}, min {theirs.min():.3f}) are not normalised alike"
        )


def build_modules(args: argparse.Namespace) -> dict[str, tuple[TensorDataModule, VisionDataset]]:
    """Our data module (set up) and torchvision's dataset over the same images, per dataset."""
    kwargs = {"val_size": 0, "batch_size": args.batch_sizes[0]}
    pairs = {}
    for name, dm, glue_cls in (
        ("CIFAR-10 (random)", SyntheticCIFAR10(args.cifar_images, **kwargs), TorchvisionCIFAR10),
        ("Fashion-MNIST", FashionMNISTDataModule(**kwargs), TorchvisionFashionMNIST),
    ):
        dm.setup("fit")
        dm.trainer = _TrainingTrainer()  # on_after_batch_transfer augments in training only
        if args.quick:
            dm.train_set.images = dm.train_set.images[:4096]
            dm.train_set.labels = dm.train_set.labels[:4096]
        images, labels = dm.train_set.images, dm.train_set.labels
        pairs[name] = (dm, glue_cls(images, labels, glue_transform(dm)))
    return pairs


class _TrainingTrainer:
    """Stands in for a Trainer in its training loop (all the data module asks of it)."""

    training = True


def machine_info(args: argparse.Namespace) -> list[str]:
    cpu = cpu_name()
    device = args.device
    if device.type == "cuda":
        device = f"{device} ({torch.cuda.get_device_name(device)})"
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}",
        f"- augmentation device (ours): {device}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}",
        f"- load average (1 min) at start: {os.getloadavg()[0]:.2f}",
    ] + _busy_note()


def _busy_note() -> list[str]:
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < cores:
        return []
    return [
        f"- **the machine was busy (load {load:.1f} on {cores} cores): the figures are noisy "
        "and lower than on a quiet machine; re-run there before quoting them**"
    ]


def spread(values: list[float]) -> str:
    """Half the min-max range relative to the median: how noisy a median is."""
    mid = statistics.median(values)
    return f"±{(max(values) - min(values)) / 2 / mid:.0%}" if mid else ""


def compare(
    dm: TensorDataModule, glue: VisionDataset, batch: int, workers: int, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Batches/s rounds of ours and of the glue, timed back to back, same batch and workers."""
    dm.batch_size, dm.num_workers = batch, workers  # read when the loader is made
    ours_batch = ours_step(dm, args.device)
    glue_batch = glue_step(glue, batch, workers, args.device)
    check_same_batches(ours_batch(), glue_batch())
    # Returning drops both steps, which ends their DataLoader workers.
    return batches_per_second(ours_batch, args), batches_per_second(glue_batch, args)


Rates = dict[tuple[str, int, int], tuple[float, float]]  # (dataset, batch, workers) -> batches/s


def same_workers_table(args: argparse.Namespace, rates: Rates) -> Iterator[str]:
    """Runs every configuration, yielding its markdown row as soon as it is measured."""
    yield (
        "| dataset | batch | workers | ours batches/s | glue batches/s | ours images/s "
        "| glue images/s | ratio | >= 5x |"
    )
    yield "|---|---|---|---|---|---|---|---|---|"
    for name, (dm, glue_set) in build_modules(args).items():
        for batch in args.batch_sizes:
            for workers in args.workers:
                ours_rates, glue_rates = compare(dm, glue_set, batch, workers, args)
                ours, glue = statistics.median(ours_rates), statistics.median(glue_rates)
                rates[name, batch, workers] = ours, glue
                yield (
                    f"| {name} | {batch} | {workers} | {ours:.1f} {spread(ours_rates)} | "
                    f"{glue:.1f} {spread(glue_rates)} | {ours * batch:,.0f} | "
                    f"{glue * batch:,.0f} | {ours / glue:.1f}x | {_met(ours / glue)} |"
                )


def best_table(args: argparse.Namespace, rates: Rates) -> list[str]:
    """Ours as configured by default (no workers) against the glue at its best worker count."""
    lines = [
        "| dataset | batch | ours, 0 workers (batches/s) | glue, best workers (batches/s) "
        "| ratio | >= 5x |",
        "|---|---|---|---|---|---|",
    ]
    names = dict.fromkeys(name for name, _, _ in rates)
    for name in names:
        for batch in args.batch_sizes:
            if (name, batch, 0) not in rates:
                continue
            ours = rates[name, batch, 0][0]
            glue, workers = max((rates[name, batch, w][1], w) for w in args.workers)
            lines.append(
                f"| {name} | {batch} | {ours:.1f} | {glue:.1f} ({workers} workers) "
                f"| {ours / glue:.1f}x | {_met(ours / glue)} |"
            )
    return lines


def _met(ratio: float) -> str:
    return "yes" if ratio >= GOAL else "no"


def report(args: argparse.Namespace) -> str:
    lines = ["# Training data throughput: in-memory tensors vs per-sample PIL", ""]
    if args.quick:
        lines += ["**Quick smoke run: a 4,096-image subset, too few batches to read into.**", ""]
    lines += [*machine_info(args), ""]
    lines += [
        f"Batches per second (higher is better), median of {args.repeats} rounds of "
        f"{args.batches} batches after {args.warmup} warm-up batches; ± is half the min-max "
        "range. A batch counts once it is on the device, augmented and normalised, ready for "
        "the model. *Ours*: the data module's DataLoader slices uint8 batches from the "
        "in-memory tensor, `on_after_batch_transfer` pad-crops, flips and normalises them "
        "on the device (`BatchAugment`). *Glue*: torchvision's `CIFAR10` / `FashionMNIST` "
        "`__getitem__` (one PIL image per sample) + v2 RandomCrop(padding) + "
        "RandomHorizontalFlip + ToImage + ToDtype + Normalize, shuffled DataLoader. "
        f"Goal: ours >= {GOAL:.0f}x glue.",
        "",
        "## Same batch size and workers on both sides",
        "",
    ]
    print("\n".join(lines), flush=True)
    rates: Rates = {}
    for row in same_workers_table(args, rates):
        lines.append(row)
        print(row, flush=True)
    best = [
        "",
        "## Each path as one would run it",
        "",
        "Ours at its default `num_workers=0` against the glue at its fastest worker count. "
        "For in-memory tensors, workers only add inter-process copies (a shared-memory "
        "segment per tensor per batch) to a slice that takes well under a millisecond in the "
        "main process: they bring ours nothing but that overhead, hence its default of 0.",
        "",
        *best_table(args, rates),
    ]
    print("\n".join(best), flush=True)
    lines += [*best, "", f"- load average (1 min) at end: {os.getloadavg()[0]:.2f}", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per path")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per path")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed round")
    parser.add_argument("--cifar-images", type=int, default=50_000, help="random CIFAR images")
    parser.add_argument("--device", type=torch.device, default=None, help="default: cuda if any")
    # One thread by default: the glue's per-image ops are below torch's parallel grain size
    # (32,768 elements) and its workers run single-threaded, so this compares like with like;
    # on a busy machine a thread team also waits at OpenMP barriers for descheduled threads
    # (8 ms per elementwise op of a 128-image batch measured at load 3 on 2 cores, vs 0.03 ms).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (intra-op)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
    parser.add_argument("--output", type=Path, help=f"markdown report (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.batch_sizes, args.workers = args.batch_sizes[:1], [0]
        args.warmup, args.repeats, args.batches = 1, 2, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        print(f"Fashion-MNIST not found in {DEBIAN_DIR}: apt-get install dataset-fashion-mnist")
        return 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    text = report(args)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
