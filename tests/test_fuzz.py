"""Property-based fuzzing (hypothesis): whatever a user feeds in, the answer is a clean
one-line error or a successful run -- never a traceback, a hang, or a non-zero exit without a
message (issue #12, "keep it fixed").

- configs: a tiny working config with one to three values replaced by odd ones (None, nan,
  inf, huge, negative, wrong types, formula-like strings, bad augmentations), through the
  real parser and a one-step fit;
- image files: small valid PNG/JPEG/GIF/BMP/TIFF/WebP files with bytes flipped, cut, inserted
  or repeated, through :func:`~moderncnn.data.images.load_image` and the evaluation resize;
- checkpoints: a real Lightning checkpoint and a ``.safetensors`` file, mutated the same way,
  through every reader (``read_checkpoint``, ``read_state_dict``, ``--ckpt_path``'s checks,
  ``--ckpt_path best``'s lookup);
- cards, export sidecars, probe folders and run folders: tests/test_fuzz_artifacts.py.

The CI budget is small (``max_examples``, about a minute and a half in all on 2 CPU cores);
``pytest -m fuzz`` runs the larger budget, which is also marked ``sweep`` so that CI's
``-m "not sweep"`` leaves it out. ``MODERNCNN_FUZZ_SEED`` picks another derandomised seed.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from moderncnn.data.images import BadImageError, load_image
from moderncnn.io.checkpoint import read_checkpoint, read_state_dict
from moderncnn.io.errors import ModernCNNError
from moderncnn.training.cli import main
from moderncnn.training.module import ImageClassifier

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as conftest.py
FUZZ_SEED = int(os.environ.get("MODERNCNN_FUZZ_SEED", "12"))


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # a one-step fit takes seconds; hangs are caught by `time_limit`
        database=None,  # nothing written into the checkout
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


@contextlib.contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Fails (as a hang) when the block runs longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- configs ----------------------------------------------------------------------------------


def base_config() -> dict:
    return {
        "seed_everything": 1,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8], "layers": [1]},
            "lr": 0.05,
        },
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {
                "data_dir": str(FASHION_MNIST_DIR),
                "batch_size": 16,
                "train_subset": 48,
                "val_size": 16,
            },
        },
        "trainer": {
            "max_epochs": 1,
            "max_steps": 1,  # one step however the mutated limits read
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "accelerator": "cpu",
            "devices": 1,  # more would start processes running pytest's argv
        },
    }


# The values a fuzzed key may take: the odd ones a config file can hold.
ODD_NUMBERS = st.sampled_from(
    [0, 1, -1, 2, 3, 7, -(2**63), 2**63, 10**6, 10**12, 0.0, -0.0, 0.5, 1.5, -0.5, 1e-300,
     1e308, -1e308, math.inf, -math.inf, math.nan, True, False]
)  # fmt: skip
ODD_STRINGS = st.sampled_from(
    ["", "abc", "=1+1", "$x$", "null", "none", "-1", "1e400", "resnet18", "sgd", "cosine",
     "../..", "/dev/zero", "\x00", "é" * 3]
)  # fmt: skip
AUGMENTATIONS = st.sampled_from(
    ["RandomHorizontalFlip", "RandomVerticalFlip", "Nope", "Normalize", "ColorJitter",
     {"RandomCrop": {"size": -3}}, {"RandomCrop": {"size": 10**6}}, {"RandomCrop": {"size": 0}},
     {"RandomCrop": {"size": 28, "padding": -5}}, {"RandomCrop": {"size": 28, "padding": 4}},
     {"RandomRotation": {"degrees": math.inf}}, {"RandomErasing": {"p": 2}},
     {"RandomResizedCrop": {"size": 28}}, {"RandomCrop": "size"}, {"A": 1, "B": 2}]
)  # fmt: skip
ODD_VALUES = st.one_of(
    st.none(),
    ODD_NUMBERS,
    ODD_STRINGS,
    st.lists(ODD_NUMBERS, max_size=4),
    st.lists(AUGMENTATIONS, max_size=3),
    st.dictionaries(ODD_STRINGS, ODD_NUMBERS, max_size=2),
)
KEYS = [
    "seed_everything", "test_after_fit",
    "model.model", "model.lr", "model.momentum", "model.weight_decay", "model.optimizer",
    "model.scheduler", "model.warmup_epochs", "model.step_size", "model.gamma",
    "model.label_smoothing", "model.aux_loss_weight", "model.lr_scaling", "model.nesterov",
    "model.scheduler_interval", "model.channels_last", "model.no_decay_bn_bias",
    "model.model_kwargs", "model.model_kwargs.channels", "model.model_kwargs.layers",
    "model.model_kwargs.weights", "model.model_kwargs.stem",
    "data.init_args.batch_size", "data.init_args.val_size", "data.init_args.train_subset",
    "data.init_args.augmentations", "data.init_args.seed", "data.init_args.num_workers",
    "data.init_args.data_dir", "data.class_path",
    "trainer.max_epochs", "trainer.limit_train_batches", "trainer.limit_val_batches",
    "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.precision",
    "trainer.check_val_every_n_epoch", "trainer.val_check_interval", "trainer.deterministic",
    "checkpoint.monitor", "checkpoint.mode", "checkpoint.save_top_k", "checkpoint.filename",
    "checkpoint.dirpath", "checkpoint.every_n_epochs",
]  # fmt: skip
# Worker processes re-import this test module's parents slowly; keep their count sane.
SMALL_INTS = {"data.init_args.num_workers": st.sampled_from([0, 1, -1, 10**6, None])}


def set_key(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


@st.composite
def mutated_configs(draw) -> dict:
    config = base_config()
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)):
        set_key(config, key, draw(SMALL_INTS.get(key, ODD_VALUES)))
    return config


def fit_once(config: dict) -> tuple[int, str, list[str]]:
    """``moderncnn fit`` on ``config`` in a fresh folder: (status, stderr, run folders made)."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
        cwd, err = Path.cwd(), io.StringIO()
        os.chdir(work)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                with time_limit(180, "a one-step fit"):
                    status = main(["fit", "-c", "config.yaml"])
        finally:
            os.chdir(cwd)
        runs = sorted(str(p.relative_to(work)) for p in work.glob("lightning_logs/version_*"))
        return status, err.getvalue(), runs


def check_config(config: dict) -> None:
    status, err, runs = fit_once(config)
    assert status in (0, 1, 2), (status, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    if status != 0:
        errors = [line for line in err.splitlines() if line.startswith("moderncnn fit: error:")]
        assert len(errors) == 1, err[-3000:]
        assert not runs, f"a refused run left {runs}: {errors[0]}"


@pytest.fixture(scope="module")
def fashion_mnist() -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            "Debian package dataset-fashion-mnist is not installed (scripts/setup.sh --test)"
        )
    return FASHION_MNIST_DIR


@seed(FUZZ_SEED)
@budget(30)
@given(config=mutated_configs())
def test_mutated_configs_fit_or_give_one_line(fashion_mnist, config: dict) -> None:
    check_config(config)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(300)
@given(config=mutated_configs())
def test_mutated_configs_fit_or_give_one_line_big_budget(fashion_mnist, config: dict) -> None:
    check_config(config)


def test_the_unmutated_config_trains(fashion_mnist) -> None:
    status, err, runs = fit_once(base_config())
    assert status == 0, err[-3000:]
    assert runs == ["lightning_logs/version_0"]


# -- bytes: images and checkpoints ------------------------------------------------------------


@st.composite
def mutated_bytes(draw, seeds: list[bytes]) -> bytes:
    """One of ``seeds`` with 1-4 edits: flip bytes, cut the end, insert or repeat a chunk."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat", "zero"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(2, 8))
        elif kind == "zero":
            data[at : at + draw(st.integers(1, 32))] = bytes(min(32, len(data) - at))
    return bytes(data)


def image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    seeds = []
    for fmt, mode in [
        ("PNG", "RGB"), ("PNG", "P"), ("PNG", "LA"), ("JPEG", "RGB"), ("JPEG", "L"),
        ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"), ("PPM", "RGB"),
    ]:  # fmt: skip
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    return seeds


IMAGE_SEEDS = image_seeds()


def check_image(data: bytes) -> None:
    from torchvision.transforms import v2

    resize = v2.Compose([v2.ToImage(), v2.Resize(32, antialias=True), v2.CenterCrop(28)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.png"
        path.write_bytes(data)
        with time_limit(30, "decoding a small image"):
            try:
                image = load_image(path)
            except BadImageError as err:
                assert str(err).startswith(f"{path}: ")
                assert "\n" not in str(err)
                return
            assert image.mode == "RGB" and min(image.size) >= 1
            assert resize(image).shape == (3, 28, 28)


@seed(FUZZ_SEED)
@budget(400)
@given(data=mutated_bytes(IMAGE_SEEDS))
def test_mutated_images_load_or_are_named_unusable(data: bytes) -> None:
    check_image(data)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(20_000)
@given(data=mutated_bytes(IMAGE_SEEDS))
def test_mutated_images_load_or_are_named_unusable_big_budget(data: bytes) -> None:
    check_image(data)


def checkpoint_seeds() -> tuple[list[bytes], ImageClassifier]:
    module = ImageClassifier(
        "resnet18_cifar", in_chans=1, model_kwargs={"channels": [4], "layers": [1]}
    )
    checkpoint = {
        "epoch": 0,
        "global_step": 1,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "callbacks": {"ModelCheckpoint{}": {"best_model_path": "/nonexistent/best.ckpt"}},
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in module.model.state_dict().items()}
    return [buffer.getvalue(), save(state)], module


CHECKPOINT_SEEDS, CHECKPOINT_MODULE = checkpoint_seeds()


def check_checkpoint(data: bytes) -> None:
    from moderncnn.training.cli import _best_checkpoint
    from moderncnn.training.preflight import check_resume_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".ckpt", ".safetensors"):
            path = Path(folder) / f"fuzzed{suffix}"
            path.write_bytes(data)
            readers: list[Callable[[Path], object]] = [read_state_dict]
            if suffix == ".ckpt":
                readers += [
                    read_checkpoint,
                    lambda p: check_resume_checkpoint(p, CHECKPOINT_MODULE, resume=True),
                    _best_checkpoint,
                ]
            for read in readers:
                with time_limit(30, "reading a small checkpoint"):
                    try:
                        read(path)
                    except (ModernCNNError, FileNotFoundError) as err:
                        assert str(err) and "\n" not in str(err).strip(), str(err)


@seed(FUZZ_SEED)
@budget(150)
@given(data=mutated_bytes(CHECKPOINT_SEEDS))
def test_mutated_checkpoints_load_or_are_refused_in_one_line(data: bytes) -> None:
    check_checkpoint(data)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(5_000)
@given(data=mutated_bytes(CHECKPOINT_SEEDS))
def test_mutated_checkpoints_load_or_are_refused_in_one_line_big_budget(data: bytes) -> None:
    check_checkpoint(data)
