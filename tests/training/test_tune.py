"""`moderncnn tune`: Optuna trials with pruning, a best config that runs, shared storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moderncnn.io.errors import ConfigError
from moderncnn.training.config import from_config
from moderncnn.training.tune import read_space, tune

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[2]


# A 5k-parameter ResNet, 2 epochs of 7 steps on 512 Fashion-MNIST images.
TINY_CONFIG = {"train_subset": 512, "max_epochs": 2}


def load(out: Path, name: str) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_tune_prunes_a_hopeless_trial_and_writes_a_best_config_that_runs(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path
) -> None:
    config, out, space = tiny_config, tmp_path / "out", tmp_path / "s.yaml"
    # A learning rate that cannot learn in 2 epochs: below the median at epoch 0, pruned.
    space.write_text("model.lr: {choices: [1.0e-6, 0.3]}\n")
    # TPE's seed 0 proposes 0.3, 1e-6, 0.3, 0.3.
    study = tune(config, space, 4, out=out, seed=0, startup_trials=1, warmup_epochs=0)

    states = [t.state for t in study.trials]
    assert len(states) == 4 and states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert states[0] == optuna.trial.TrialState.COMPLETE
    for trial in study.trials:  # the validation accuracy of every epoch it ran, reported
        assert trial.intermediate_values and min(trial.intermediate_values) == 0
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.params["model.lr"] == 1e-6  # unfinished: no result.json
            assert not (Path(trial.user_attrs["run_dir"]) / "result.json").exists()
    assert study.best_trial.params["model.lr"] == 0.3
    best_run = Path(study.best_trial.user_attrs["run_dir"])
    assert (best_run / "result.json").exists() and (best_run / "trial.yaml").exists()

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["lr"] == 0.3 and best["model"]["model_kwargs"]["channels"] == [8, 16]
    assert "logger" not in best["trainer"]  # ready to run anywhere, not into a trial folder
    for figure in ("history.png", "importance.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    run = tmp_path / "best_run"
    model, data, trainer = from_config(
        out / "best.yaml",
        **{"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.default_root_dir":
           str(run), "trainer.logger": False},
    )  # fmt: skip
    assert model.hparams.lr == 0.3
    trainer.fit(model, datamodule=data)
    assert trainer.current_epoch == 1


@pytest.mark.slow
def test_two_workers_on_one_journal_run_disjoint_trials(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path
) -> None:
    config, out, space = tiny_config, tmp_path / "out", tmp_path / "s.yaml"
    space.write_text("model.lr: {low: 0.01, high: 0.5, log: true}\n")
    argv = [
        sys.executable, "-m", "moderncnn.cli", "tune", "-c", str(config), "--space", str(space),
        "--trials", "2", "--out", str(out), "--study", "shared", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err.decode()[-2000:]

    trials = load(out, "shared").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["model.lr"] for t in trials}) == 4
    folders = {t.user_attrs["run_dir"] for t in trials}
    assert folders == {str(out / "trials" / "shared" / f"trial{n}") for n in range(4)}
    assert all((Path(f) / "result.json").exists() for f in folders)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("model.lr: {low: 0.0, high: 1.0, log: true}", "model.lr: a log-scale range needs low > 0"),
        ("model.lr: {low: 1.0, high: 0.1}", "model.lr: low must be below high"),
        ("model.lr: {choices: []}", "model.lr: choices must be a non-empty list"),
        ("model.lr: {lo: 0.1, high: 1.0}", "model.lr: unknown field 'lo'"),
        ("model.lr: 0.1", "model.lr: expected"),
        ("- model.lr", "expected a mapping"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_key(
    tmp_path: Path, space: str, message: str
) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    with pytest.raises(ConfigError, match=message):
        read_space(path)


def test_a_search_space_reads_ranges_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "model.lr: {low: 0.01, high: 1.0, log: true}\n"
        "trainer.max_epochs: {low: 2, high: 6}\n"
        "model.model_kwargs: {choices: [{channels: [8, 16]}, {channels: [16, 32]}]}\n"
    )
    lr, epochs, kwargs = read_space(path)
    assert (lr.kind, lr.log, epochs.kind, kwargs.kind) == ("float", True, "int", "choice")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [p.suggest(study.ask()) for p in (lr, epochs, kwargs)]
    assert 0.01 <= values[0] <= 1.0 and values[1] in range(2, 7)
    assert values[2] in ({"channels": [8, 16]}, {"channels": [16, 32]})
