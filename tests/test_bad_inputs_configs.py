"""Bad training configs: every mistake is one line naming the key or value, before any data is
loaded or file written (moved here from tests/training/test_training_cli.py, and extended)."""

from __future__ import annotations

import os
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
    (["--model.scheduler", "cosin"], 2, "Literal['onecycle', 'cosine', 'step', 'none']"),
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
