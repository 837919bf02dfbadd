"""`moderncnn compare` of the four families' small-image variants on Fashion-MNIST, on a CPU.

ResNet-18, DenseNet-121, GoogLeNet and Inception v3, each in its 32x32 form (3x3 stride-1
stem, no early max-pool) and cut to a width that trains in about a minute on 2 CPU cores:

- resnet18_cifar: 1/4 of the widths (16-32-64-128), one residual unit per stage;
- densenet121_cifar: growth rate 12 (not 32), 24 stem channels, dense blocks of 2-4-4 layers;
- googlenet_cifar and inception_v3_cifar: `width_multiplier` 0.125 (every branch 1/8 wide).

Same data, schedule (SGD + Nesterov, one cycle) and budget for all: 3,584 training images
(4,096 drawn from the training split, 512 of them held out for validation), 2 epochs,
batch 128, tested on the first 2,048 test images, 2 seeds each.

    python benchmarks/compare.py            # about 6 minutes on 2 cores
    python benchmarks/compare.py --quick    # smoke run (tiny budget): writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from moderncnn.training.compare import compare, markdown_table
from moderncnn.training.run_facts import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

BASE = {
    "seed_everything": 0,
    "model": {
        "model": "resnet18_cifar",
        "model_kwargs": {"channels": [16, 32, 64, 128], "layers": [1, 1, 1, 1]},
        "optimizer": "sgd",
        "lr": 0.2,  # peak of the one cycle, for batch 128
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5.0e-4,
        "scheduler": "onecycle",
        "warmup_epochs": 0.5,  # epochs
        "channels_last": True,
    },
    "data": {
        "class_path": "moderncnn.data.FashionMNISTDataModule",
        "init_args": {
            "batch_size": 128,  # images per step
            "train_subset": 4096,  # images drawn from the training split ...
            "val_size": 512,  # ... of which held out for validation
            "augmentations": ["RandomHorizontalFlip"],
        },
    },
    "trainer": {
        "max_epochs": 2,
        "accelerator": "cpu",
        "limit_test_batches": 16,  # 16 x 128 = the first 2,048 test images
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
}
MODELS = {
    "resnet18_cifar": {},  # the base config's own model_kwargs
    "densenet121_cifar": {"growth_rate": 12, "num_init_features": 24, "block_config": [2, 4, 4]},
    "googlenet_cifar": {"width_multiplier": 0.125},
    "inception_v3_cifar": {"width_multiplier": 0.125},
}
QUICK = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_test_batches": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, writes nothing")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", help="compare's output folder (default: a temporary one)")
    args = parser.parse_args()
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        print(f"needs Fashion-MNIST in {FASHION_MNIST_DIR} (scripts/setup.sh)", file=sys.stderr)
        return 1
    out = Path(args.out or tempfile.mkdtemp(prefix="moderncnn-compare-"))
    config = out / "base.yaml"
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(BASE, sort_keys=False))
    overrides = QUICK if args.quick else {}
    model_overrides = {m: {"model.model_kwargs": kw} for m, kw in MODELS.items() if kw}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    summaries = compare(
        config, list(MODELS), seeds=1 if args.quick else args.seeds, out=out,
        overrides=overrides, model_overrides=model_overrides,
    )  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    table = markdown_table(summaries, Path("base.yaml"), overrides)
    print(table)
    if args.quick:
        return 0
    RESULTS.mkdir(exist_ok=True)
    for figure in ("accuracy_vs_macs.png", "curves.png"):
        shutil.copyfile(out / figure, RESULTS / f"compare_{figure}")
    widths = "; ".join(
        f"{m} {json.dumps(kw or BASE['model']['model_kwargs'])}" for m, kw in MODELS.items()
    )
    lines = [
        "# `moderncnn compare`: four families on Fashion-MNIST, on a CPU",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- load average (1 min) at start: {load:.2f}; whole compare: {minutes:.1f} min",
        "- budget: 2 epochs of 3,584 training images (batch 128, SGD + Nesterov, one cycle, "
        "peak lr 0.2), 512 validation images, test on the first 2,048 test images; "
        f"{args.seeds} seeds per model (seed_everything 0..{args.seeds - 1})",
        f"- widths (CPU-sized, see benchmarks/compare.py): {widths}",
        "",
        table,
        "![accuracy vs MACs](compare_accuracy_vs_macs.png)",
        "![validation curves](compare_curves.png)",
        "",
    ]
    (RESULTS / "compare.md").write_text("\n".join(lines))
    print(RESULTS / "compare.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
