"""moderncnn.Trainer and from_config: a Python run writes the run folder `moderncnn fit` writes."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from moderncnn import Trainer, from_config
from moderncnn.data import FashionMNISTDataModule
from moderncnn.io.errors import ConfigError
from moderncnn.training.callbacks import LearningCurvesPlot, LearningRateLog
from moderncnn.training.cli import main
from moderncnn.training.divergence import DivergenceWarning
from moderncnn.training.module import ImageClassifier
from moderncnn.training.trainer import Results
from moderncnn.viz.curves import read_learning_rates

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAINER = {
    "max_epochs": 2,
    "limit_train_batches": 3,
    "limit_val_batches": 2,
    "limit_test_batches": 2,
    "log_every_n_steps": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
MODEL = {"model": "resnet18_cifar", "model_kwargs": {"channels": [8, 16], "layers": [1, 1]}}
DATA = {"data_dir": str(FASHION_MNIST_DIR), "batch_size": 32, "train_subset": 128, "val_size": 64}


def run_files(workdir: Path) -> set[str]:
    """The files of workdir's only run folder, with the parts that vary (time, host, score)
    replaced."""
    (run,) = (workdir / "lightning_logs").iterdir()
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    names = {re.sub(r"tfevents\..*", "tfevents.*", n) for n in names}
    names = {re.sub(r"epoch=\d+", "epoch=*", n) for n in names}
    return {re.sub(r"val_acc=\d+\.\d+", "val_acc=*", n) for n in names}


def enter(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.mkdir()
    monkeypatch.chdir(folder)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    path = tmp_path / "config.yaml"
    config = {
        "seed_everything": 7,
        "test_after_fit": True,
        "model": MODEL,
        "data": {"class_path": "moderncnn.data.FashionMNISTDataModule", "init_args": DATA},
        "trainer": TRAINER,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_python_trainer_from_config_and_cli_write_the_same_run_folder(
    config_file: Path, tmp_path: Path, monkeypatch
) -> None:
    enter(tmp_path / "cli", monkeypatch)
    assert main(["fit", "-c", str(config_file)]) == 0
    cli_files = run_files(tmp_path / "cli")

    enter(tmp_path / "python", monkeypatch)
    L.seed_everything(7)
    data = FashionMNISTDataModule(**DATA)
    model = ImageClassifier(**MODEL, num_classes=10, in_chans=1)
    trainer = Trainer(**TRAINER)
    trainer.fit(model, datamodule=data)
    results = trainer.test(model, datamodule=data, ckpt_path="best")
    assert run_files(tmp_path / "python") == cli_files

    enter(tmp_path / "config", monkeypatch)
    model, data, trainer = from_config(config_file, **{"trainer.limit_val_batches": 1})
    assert trainer.limit_val_batches == 1 and model.hparams.num_classes == 10
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, ckpt_path="best")
    assert run_files(tmp_path / "config") == cli_files

    expected = {"config.yaml", "hparams.yaml", "metrics.csv", "curves.png", "checkpoints/last.ckpt"}
    expected |= {"confusion_matrix.png", "confusion_matrix.csv", "per_class_accuracy.csv"}
    assert expected <= cli_files and "checkpoints/best-epoch=*-val_acc=*.ckpt" in cli_files
    assert isinstance(results, Results) and "test_acc" in repr(results)
    assert "lr-SGD" in (next((tmp_path / "cli").rglob("metrics.csv"))).read_text()


def test_a_python_runs_config_yaml_repeats_it_with_the_cli(
    config_file: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    L.seed_everything(7)
    trainer = Trainer(**TRAINER)
    trainer.fit(
        ImageClassifier(**MODEL, num_classes=10, in_chans=1), FashionMNISTDataModule(**DATA)
    )
    saved = Path(trainer.logger.log_dir) / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    assert config["model"]["model_kwargs"] == MODEL["model_kwargs"]
    assert config["data"]["init_args"]["train_subset"] == 128 and config["seed_everything"] == 7
    assert main(["fit", "-c", str(saved)]) == 0
    assert len(list((tmp_path / "lightning_logs").iterdir())) == 2


def test_users_loggers_and_callbacks_add_to_ours(tmp_path: Path) -> None:
    mine = CSVLogger(tmp_path, name="mine")
    stop = EarlyStopping("val_loss")
    trainer = Trainer(default_root_dir=tmp_path, logger=mine, callbacks=stop)
    kinds = [type(lg) for lg in trainer.loggers]
    assert kinds == [TensorBoardLogger, CSVLogger, CSVLogger] and trainer.loggers[2] is mine
    assert stop in trainer.callbacks and any(
        isinstance(c, LearningRateLog) for c in trainer.callbacks
    )
    assert isinstance(trainer.checkpoint_callback, ModelCheckpoint)
    assert trainer.checkpoint_callback.monitor == "val_acc"
    assert Path(trainer.loggers[0].log_dir) == tmp_path / "lightning_logs" / "version_0"

    plain = Trainer(moderncnn_defaults=False, default_root_dir=tmp_path, callbacks=[stop])
    assert not any(isinstance(c, LearningCurvesPlot | LearningRateLog) for c in plain.callbacks)
    assert [type(lg) for lg in plain.loggers] == [TensorBoardLogger]  # Lightning's default
    quiet = Trainer(logger=False, enable_checkpointing=False)
    assert quiet.loggers == [] and quiet.checkpoint_callback is None


class Fails(L.Callback):
    def on_train_batch_start(self, *args: object) -> None:
        raise RuntimeError("out of memory (a stand-in)")


def test_a_failed_python_run_leaves_no_run_folder(tmp_path: Path) -> None:
    """As a refused or failed CLI run: plot_curves("lightning_logs/version_0") must not find a
    broken run's folder."""
    data = FashionMNISTDataModule(**DATA)
    model = ImageClassifier(num_classes=10, in_chans=1, **MODEL)
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[Fails()], **TRAINER)
    with pytest.raises(RuntimeError, match="a stand-in"):
        trainer.fit(model, datamodule=data)
    assert not (tmp_path / "lightning_logs").exists()


def test_pl_trainer_environment_variables_set_arguments(tmp_path: Path, monkeypatch) -> None:
    """Lightning's PL_TRAINER_<NAME> switches (the tests run the README's block with them)."""
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "2")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")
    trainer = Trainer(default_root_dir=tmp_path, limit_val_batches=3)
    assert trainer.limit_train_batches == 2 and trainer.limit_val_batches == 3
    assert Trainer(default_root_dir=tmp_path, limit_train_batches=5).limit_train_batches == 5


def test_from_config_names_an_unknown_key(config_file: Path) -> None:
    with pytest.raises(ConfigError, match="max_epoks"):
        from_config(config_file, **{"trainer.max_epoks": 1})


def fake_run(val_loss: float, val_acc: float, max_epochs: int = 1, global_step: int = 100):
    trainer = SimpleNamespace(
        sanity_checking=False,
        callback_metrics={"val_loss": val_loss, "val_acc": val_acc},
        max_epochs=max_epochs,
        current_epoch=0,
        global_step=global_step,
    )
    module = SimpleNamespace(num_classes=10, hparams={"lr": 0.1, "warmup_epochs": 2})
    return trainer, module


def test_exploded_validation_loss_at_chance_warns_with_the_likely_cause() -> None:
    callback = DivergenceWarning()
    with pytest.warns(UserWarning, match=r"warmup_epochs \(2\) >= trainer.max_epochs \(1\)"):
        callback.on_validation_epoch_end(*fake_run(91.8, 0.094))
    healthy = DivergenceWarning()
    for metrics in [(2.2, 0.094), (91.8, 0.6)]:  # an untrained guess; a confident learner
        healthy.on_validation_epoch_end(*fake_run(*metrics, max_epochs=200))
    assert not healthy.warned


def test_an_early_validation_is_not_judged_but_a_short_runs_last_one_is() -> None:
    # BatchNorm's running statistics after 10 steps: a healthy network can score a huge loss.
    early = DivergenceWarning()
    early.on_validation_epoch_end(*fake_run(14.4, 0.112, max_epochs=-1, global_step=10))
    assert not early.warned
    early.on_validation_epoch_end(*fake_run(0.6, 0.8, max_epochs=-1, global_step=60))
    early.on_train_end(*fake_run(0.6, 0.8, max_epochs=-1, global_step=200))
    assert not early.warned  # it recovered: no warning at all
    short = DivergenceWarning()
    short.on_validation_epoch_end(*fake_run(91.8, 0.094, global_step=4))
    assert not short.warned
    with pytest.warns(UserWarning, match="val_loss 91.8"):
        short.on_train_end(*fake_run(91.8, 0.094, global_step=4))


def test_the_learning_rate_is_logged_every_step_of_a_short_run(tmp_path: Path) -> None:
    # Issue 24: Lightning's monitor logged every log_every_n_steps (50), so a 4-step run's
    # learning-rate panel was empty and named a callback the user never added.
    data = FashionMNISTDataModule(**DATA)
    model = ImageClassifier(num_classes=10, in_chans=1, **MODEL)
    short = {k: v for k, v in TRAINER.items() if k != "log_every_n_steps"}  # Lightning's 50
    trainer = Trainer(default_root_dir=tmp_path, **short)
    trainer.fit(model, datamodule=data)
    rates = read_learning_rates(Path(trainer.log_dir))
    assert rates and all(len(points) == 4 for points in rates.values())  # 2 epochs x 2 steps
    assert len({lr for _, lr in next(iter(rates.values()))}) > 2  # the warm-up is visible

    long = LearningRateLog()
    long.on_train_start(SimpleNamespace(estimated_stepping_batches=10_000), model)
    assert long.every == 50  # 200 points a run, however long
