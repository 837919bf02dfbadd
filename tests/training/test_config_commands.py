"""Every command in every config's header comment runs, with CPU-sized settings appended."""

from __future__ import annotations

import json
import pickle
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moderncnn.cli import main
from moderncnn.data.cifar10 import CLASS_NAMES
from moderncnn.models import create_model

REPO = Path(__file__).resolve().parents[2]
CIFAR_SAMPLES = REPO.parent / "shared" / "data" / "cifar10-test-samples"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
# Appended to each command (later values win): seconds on a CPU, whatever the recipe.
CPU_SIZED = [
    "--trainer.accelerator=cpu",
    "--trainer.precision=32-true",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.batch_size=4",
]
TENSOR_DATA = ["--data.init_args.train_subset=8", "--data.init_args.val_size=2"]


def header_commands(config: Path) -> list[str]:
    """The ``moderncnn ...`` lines of the comment block at the top of a config."""
    commands = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        found = re.match(r"#\s+(moderncnn \S.*?)(\s{2,}\(.*\))?$", line)
        if found:
            commands.append(found.group(1))
    return commands


def _marks(path: Path) -> list[pytest.MarkDecorator]:
    """Quickstart: always; ResNet recipes: slow (still in CI); the full-size DenseNet, GoogLeNet
    and Inception recipes: the sweep (30-90 s each on 2 busy cores), which CI leaves out."""
    if path.name == "quickstart.yaml":
        return []
    if path.stem in ("densenet121", "googlenet", "inception_v3"):
        return [pytest.mark.sweep]
    return [pytest.mark.slow]


COMMANDS = [
    pytest.param(
        path,
        command,
        id=f"{path.relative_to(REPO).as_posix()}:{i}",
        marks=_marks(path),
    )
    for path in sorted((REPO / "configs").rglob("*.yaml"))
    for i, command in enumerate(header_commands(path))
]


def test_every_config_names_its_command() -> None:
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert all(header_commands(p) for p in configs)
    assert len(COMMANDS) >= len(configs)


def fake_cifar(root: Path) -> None:
    """CIFAR-10's on-disk format holding the 20 real test images: 10 to train, 10 to test."""
    if not CIFAR_SAMPLES.is_dir():
        pytest.skip(f"{CIFAR_SAMPLES} not found (CI puts ../shared beside the checkout)")
    files = sorted(CIFAR_SAMPLES.glob("cifar10_*_*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    labels = [int(f.stem.split("_")[2]) for f in files]
    folder = root / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = [(f"data_batch_{i + 1}", slice(2 * i, 2 * i + 2)) for i in range(5)]
    for name, part in [*parts, ("test_batch", slice(10, 20))]:
        batch = {b"labels": labels[part], b"data": rows[part], b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_cases_per_batch": 2}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))


def finetune_files(root: Path) -> list[str]:
    """An image folder and a local backbone file for a config that downloads ImageNet weights."""
    for label in ("cat", "dog"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (60 * i, 90, 30)).save(root / "images" / label / f"{i}.png")
    backbone = create_model("resnet18")
    backbone.reset_classifier(0)
    torch.save(backbone.state_dict(), root / "backbone.pth")
    return [
        f"--data.init_args.root={root / 'images'}",
        "--data.init_args.image_size=32",
        "--data.init_args.val_fraction=0.25",
        "--data.init_args.test_fraction=0.25",
        f"--model.model_kwargs={json.dumps({'weights': str(root / 'backbone.pth')})}",
    ]


@pytest.mark.parametrize(("config", "command"), COMMANDS)
def test_header_command_runs(config: Path, command: str, tmp_path: Path, monkeypatch) -> None:
    argv = shlex.split(command)[1:]
    argv = [str(REPO / a) if a.startswith("configs/") else a for a in argv]  # run elsewhere
    # The data section may come from any of the -c files (a preset adds to a recipe).
    text = config.read_text() + "".join(Path(a).read_text() for a in argv if a.endswith(".yaml"))
    extra = list(CPU_SIZED)
    if "CIFAR10DataModule" in text:
        fake_cifar(tmp_path)
        extra += TENSOR_DATA
    elif "FashionMNISTDataModule" in text:
        if not FASHION_MNIST.is_file():
            pytest.skip("Debian package dataset-fashion-mnist is not installed")
        extra += TENSOR_DATA
    else:
        extra += finetune_files(tmp_path / "user")
    monkeypatch.chdir(tmp_path)
    assert main([*argv, *extra]) == 0
    if argv[0] == "compare":  # one trial folder per model and seed, then the reports
        out = tmp_path / argv[argv.index("--out") + 1]
        models = argv[argv.index("--models") + 1 : argv.index("--seeds")]
        trials = sorted(out.glob("runs/*/seed*/result.json"))
        assert len(trials) == len(models) * int(argv[argv.index("--seeds") + 1])
        assert (out / "results.md").is_file() and (out / "curves.png").is_file()
        return
    runs = sorted((tmp_path / "lightning_logs").glob("version_*"))
    seeds = argv[argv.index("--seeds") + 1] if "--seeds" in argv else None
    assert len(runs) == (1 if seeds is None else int(seeds))  # `--seeds N`: one run per seed
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "curves.png").is_file()
    if seeds is not None:
        assert (tmp_path / "lightning_logs" / "seeds_0.md").is_file()
