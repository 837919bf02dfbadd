"""Bad training configs: every mistake is one line naming the key or value, before any data is
loaded or file written (moved here from tests/training/test_training_cli.py, and extended)."""

from __future__ import annotations

import os
import time
from itertools import pairwise
from pathlib import Path

import lightning.pytorch as L
import pytest
import yaml

from moderncnn.data import FashionMNISTDataModule
from moderncnn.training.cli import main
from moderncnn.training.module import ImageClassifier

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as conftest.py


def tiny_config() -> dict:
    return {
        "model": {"model": "resnet18_cifar", "model_kwargs": {"channels": [8], "layers": [1]}},
        "data": {
            "class_path": "moderncnn.data.FashionMNISTDataModule",
            "init_args": {"data_dir": str(FASHION_MNIST_DIR), "batch_size": 64},
        },
        "trainer": {"max_epochs": 1, "enable_progress_bar": False},
    }


def run_fit(workdir: Path, config: dict, *args: str) -> int:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        return main(["fit", "-c", str(path), *args])
    finally:
        os.chdir(cwd)


# (command-line override, status, what the message must say)
CASES = [
    # unknown keys
    (["--model.lrr", "0.1"], 2, "unrecognized arguments: --model.lrr"),
    (["--trainer.max_epochz=3"], 2, "trainer.max_epochz"),
    # wrong types
    (["--model.lr", "fast"], 2, "Expected a <class 'float'>. Got value: fast"),
    (["--data.init_args.batch_size=abc"], 2, "Expected a <class 'int'>. Got value: abc"),
    # zero or negative sizes, rates, epochs
    (["--data.init_args.batch_size=0"], 1, "data: batch_size must be a positive integer, got 0"),
    (["--data.init_args.batch_size=-4"], 1, "batch_size must be a positive integer, got -4"),
    (["--model.lr=0"], 1, "lr must be > 0, got 0.0"),
    (["--model.lr=-0.1"], 1, "lr must be > 0, got -0.1"),
    (["--trainer.max_epochs=0"], 1, "trainer.max_epochs must be >= 1 (or -1 for no limit), got 0"),
    (["--trainer.max_epochs=-5"], 1, "`max_epochs` must be a non-negative integer or -1"),
    (["--trainer.max_epochs=-1"], 1, "the 'onecycle' schedule needs a run of known length"),
    # unknown names
    (["--model.model", "resnet18_cifr"], 1, "Did you mean 'resnet18_cifar'"),
    (["--model.optimizer", "rmsprop"], 2, "Expected a typing.Literal['sgd', 'adam', 'adamw']"),
    (["--model.scheduler", "cosin"], 2, "'cosine', 'step', 'none', 'multistep']"),
    (["--model.lr_scaling", "cubic"], 2, "Expected a typing.Literal['none', 'linear', 'sqrt']"),
    (["--data.init_args.augmentations=[RandomFlipp]"], 1, "unknown augmentation 'RandomFlipp'"),
    # class count given twice: the data's wins, and saying otherwise is refused
    (["--model.num_classes=5"], 2, '"model.num_classes" must be given via "data.num_classes"'),
]


@pytest.mark.parametrize(("override", "status", "message"), CASES, ids=lambda v: str(v)[:40])
def test_config_errors_are_one_clear_message(
    override: list[str], status: int, message: str, tmp_path: Path, capsys
) -> None:
    assert run_fit(tmp_path, tiny_config(), *override) == status
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and "usage:" not in err
    assert "Union subtypes" not in err or status == 2  # the data module's message, unwrapped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written


def test_unknown_key_in_a_config_file_is_named(tmp_path: Path, capsys) -> None:
    config = tiny_config()
    config["model"]["weight_decy"] = 0.1
    assert run_fit(tmp_path, config) == 2
    assert "does not accept option 'model.weight_decy'" in capsys.readouterr().err


def test_wrong_type_in_a_config_file_is_named(tmp_path: Path, capsys) -> None:
    config = tiny_config()
    config["trainer"]["max_epochs"] = "three"
    assert run_fit(tmp_path, config) == 2
    assert 'Parser key "trainer.max_epochs"' in capsys.readouterr().err


def test_num_classes_that_disagree_with_the_data_are_named(fashion_mnist_dir: Path) -> None:
    # From Python there is no link to enforce it: the model checks the data at setup.
    data = FashionMNISTDataModule(
        str(fashion_mnist_dir), batch_size=16, train_subset=64, val_size=16
    )
    module = ImageClassifier("resnet18_cifar", num_classes=5, in_chans=1, scheduler="none")
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, barebones=True)
    with pytest.raises(
        ValueError,
        match=r"model.num_classes is 5 but the data "
        r"\(FashionMNISTDataModule\) has 10 classes",
    ):
        trainer.fit(module, datamodule=data)


# -- issue #12: values that crashed, hung or trained silently wrong ---------------------------

LAUGHS = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in pairwise("abcdefgh")),
    ]
)

# (command-line override, status, what the message must say); all refused before any folder.
MORE_CASES = [
    # non-finite and overflowing numbers
    (["--model.lr=.inf"], 1, "model.lr must be a finite number (at most 3.4e+38), got inf"),
    (["--model.lr=-.inf"], 1, "model.lr must be a finite number"),
    (["--model.lr=nan"], 2, 'Parser key "model.lr"'),
    (["--model.lr=1e308"], 1, "model.lr must be a finite number (at most 3.4e+38), got 1e+308"),
    (["--model.weight_decay=1e39"], 1, "model.weight_decay must be a finite number"),
    (["--model.momentum=.nan"], 1, "model.momentum must be a finite number"),
    (["--model.warmup_epochs=.inf"], 1, "model.warmup_epochs must be a finite number"),
    # nulls
    (["--model.lr=null"], 2, 'Parser key "model.lr"'),
    (["--model.momentum=null"], 2, 'Parser key "model.momentum"'),
    (["--model.weight_decay=null"], 2, 'Parser key "model.weight_decay"'),
    (["--model=null"], 2, 'Parser key "model"'),
    # model sizes: a number for a list, a network that would take hours to build
    (
        ['--model.model_kwargs={"channels": 8, "layers": [1]}'],
        1,
        "model.model_kwargs {'channels': 8, 'layers': [1]} do not fit resnet18_cifar",
    ),
    (
        ['--model.model_kwargs={"channels": [8], "layers": [1000000]}'],
        1,
        "model.model_kwargs.layers asks for 1000000 units in all, more than the 1000",
    ),
    (
        ['--model.model_kwargs={"channels": [10000000], "layers": [1]}'],
        1,
        "model.model_kwargs.channels[0] is 10000000, above 65536",
    ),
    (["--model.model_kwargs=[1, 2]"], 2, 'Parser key "model.model_kwargs"'),
    # augmentations that fail only on the first image
    (
        ['--data.init_args.augmentations=[{"RandomCrop": {"size": -3}}]'],
        1,
        "augmentation RandomCrop with arguments {'size': -3}: size must be positive",
    ),
    # trainer settings
    (
        ["--trainer.accumulate_grad_batches=0"],
        1,
        "trainer.accumulate_grad_batches must be an integer >= 1 (batches per optimizer step)",
    ),
    (
        ["--trainer.devices=1000", "--trainer.accelerator=cpu"],
        1,
        "trainer.devices=1000 would start 1000 training processes on the CPU, which has",
    ),
]


@pytest.mark.parametrize(("override", "status", "message"), MORE_CASES, ids=lambda v: str(v)[:40])
def test_more_config_errors_are_one_clear_message(
    override: list[str], status: int, message: str, tmp_path: Path, capsys
) -> None:
    started = time.monotonic()
    assert run_fit(tmp_path, tiny_config(), *override) == status
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written
    assert time.monotonic() - started < 60  # refused, not built for an hour


def test_billion_laughs_config_is_refused_at_once(tmp_path: Path, capsys) -> None:
    (tmp_path / "laughs.yaml").write_text(LAUGHS + "\nmodel:\n  model: resnet18_cifar\n")
    started = time.monotonic()
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(["fit", "-c", "laughs.yaml"]) == 1
    finally:
        os.chdir(cwd)
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "laughs.yaml: its YAML aliases (&name / *name) expand to more than 100000" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["laughs.yaml"]


def test_a_few_yaml_aliases_are_fine(tmp_path: Path) -> None:
    from moderncnn.training.cli import check_config_files

    (tmp_path / "ok.yaml").write_text("a: &w [8, 16]\nmodel:\n  model_kwargs: {channels: *w}\n")
    check_config_files(["fit", "-c", str(tmp_path / "ok.yaml")])


def test_checkpoint_dirpath_that_is_a_file_is_named_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "ckpts").write_text("a file, not a folder")
    assert run_fit(tmp_path, tiny_config(), "--checkpoint.dirpath=ckpts") == 1
    err = capsys.readouterr().err
    ckpts = (tmp_path / "ckpts").resolve()  # ModelCheckpoint makes dirpath absolute
    assert f"cannot write checkpoint.dirpath {ckpts}: {ckpts} is a file; set checkpoint" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "config.yaml"]


def quick_config() -> dict:
    """One epoch of two steps on 64 images: a second or two."""
    config = tiny_config()
    config["data"]["init_args"] |= {"batch_size": 16, "train_subset": 64, "val_size": 16}
    config["trainer"] |= {"limit_train_batches": 2, "limit_val_batches": 1}
    config["trainer"]["enable_model_summary"] = False
    return config


@pytest.mark.parametrize("warmup", ["0", "0.5", "1"])
def test_one_cycle_without_warm_up_steps_trains(
    warmup: str, fashion_mnist_dir: Path, tmp_path: Path, capsys
) -> None:
    # Two steps in all: the warm-up rounds to 0 or 1 step, where OneCycleLR divided by zero.
    assert run_fit(tmp_path, quick_config(), f"--model.warmup_epochs={warmup}") == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_one_cycle_decay_without_warm_up_starts_at_the_peak() -> None:
    from moderncnn.training.module import _OneCycleDecay

    decay = _OneCycleDecay(total=5)
    factors = [decay(step) for step in range(5)]
    assert factors[0] == 1 and factors == sorted(factors, reverse=True)
    assert factors[-1] == pytest.approx(1 / 250_000)
    assert _OneCycleDecay(total=1)(0) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # fails in setup, after the run folder is opened
        (["--data.init_args.data_dir=/nonexistent/fmnist"], "Fashion-MNIST not found in"),
        # diverges at once: stopped at the first non-finite loss
        (
            ["--model.lr=1e30", "--model.scheduler=none"],
            "training diverged: the training loss is nan at step",
        ),
    ],
    ids=["missing data", "diverged"],
)
def test_runs_refused_after_the_run_folder_opened_leave_none(
    override: list[str], message: str, fashion_mnist_dir: Path, tmp_path: Path, capsys
) -> None:
    earlier = tmp_path / "lightning_logs" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("an earlier run's\n")
    assert run_fit(tmp_path, quick_config(), *override) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    assert (earlier / "metrics.csv").read_text() == "an earlier run's\n"


def test_a_refused_run_removes_the_folders_it_made(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    assert run_fit(tmp_path, quick_config(), "--data.init_args.data_dir=/nonexistent") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no lightning_logs/
