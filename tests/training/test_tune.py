"""`moderncnn tune`: Optuna trials with pruning, a best config that runs, shared storage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moderncnn.cli import main as moderncnn_main
from moderncnn.io.errors import ConfigError
from moderncnn.training.config import from_config
from moderncnn.training.tune import make_sampler_and_pruner, read_space, tune

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
        "--trials", "2", "--out", str(out), "--study_name", "shared", "--trainer.max_epochs", "1",
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


# One training step and one validation batch: a trial in about a second.
ONE_STEP = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 1,
    "trainer.limit_val_batches": 1,
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def write_space(path: Path, text: str = "model.lr: {low: 0.01, high: 0.5, log: true}\n") -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_configs_named_alike_make_two_studies_each_with_its_own_best(
    fashion_mnist_dir: Path, tmp_path: Path, make_tiny_config
) -> None:
    # Issue 23 H3: cifar10/resnet18.yaml and fashion_mnist/resnet18.yaml once shared a study.
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = make_tiny_config(tmp_path / "a" / "resnet.yaml", 128)
    second = make_tiny_config(tmp_path / "b" / "resnet.yaml", 256)
    space, out = write_space(tmp_path / "s.yaml"), tmp_path / "out"
    one = tune(first, space, 1, out=out, overrides=ONE_STEP, seed=0)
    two = tune(second, space, 1, out=out, overrides=ONE_STEP, seed=0)
    assert one.study_name.startswith("resnet-") and two.study_name.startswith("resnet-")
    assert one.study_name != two.study_name
    assert [len(load(out, s.study_name).trials) for s in (one, two)] == [1, 1]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["data"]["init_args"]["train_subset"] == 256  # the second study's own config


@pytest.mark.slow
def test_joining_a_study_with_another_config_space_or_overrides_is_refused(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path
) -> None:
    # Issue 23 H3, M6: changed overrides went unnoticed; a space key added or a range turned
    # into choices ended in a traceback.
    space, out = write_space(tmp_path / "s.yaml"), tmp_path / "out"
    tune(tiny_config, space, 1, out=out, study_name="s", overrides=ONE_STEP)
    before, config, space_text = snapshot(out), tiny_config.read_text(), space.read_text()
    changes = {
        "trainer.limit_train_batches: 1 there, 2 now": ({"trainer.limit_train_batches": 2}, "", ""),
        "model.lr: 0.1 there, 0.2 now": ({}, "lr: 0.2", ""),
        r"space.model.momentum: \(not set\) there": (
            {}, "", "model.momentum: {low: 0.8, high: 0.95}\n"),
        "space.model.lr.kind: 'float' there, 'choice' now": (
            {}, "", "model.lr: {choices: [0.05, 0.1]}\n"),
    }  # fmt: skip
    for message, (overrides, lr, space_line) in changes.items():
        tiny_config.write_text(config.replace("lr: 0.1", lr) if lr else config)
        replaced = space_line.startswith("model.lr")
        space.write_text(space_line if replaced else space_text + space_line)
        with pytest.raises(ConfigError, match=rf"study 's' in .*was made from another.*{message}"):
            tune(
                tiny_config, space, 1, out=out, study_name="s", overrides={**ONE_STEP, **overrides}
            )
        assert snapshot(out) == before  # the journal and the trial folders as they were


@pytest.mark.slow
def test_a_new_storage_never_overwrites_a_finished_trial(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path
) -> None:
    # Issue 23 H5: trial numbers restarted at 0 and trial0's metrics.csv was deleted.
    space, out = write_space(tmp_path / "s.yaml"), tmp_path / "out"
    study = tune(tiny_config, space, 1, out=out, overrides=ONE_STEP)
    trial0 = out / "trials" / study.study_name / "trial0"
    assert (trial0 / "result.json").is_file() and (trial0 / "metrics.csv").is_file()
    before, other = snapshot(trial0), tmp_path / "other.journal"
    refused = rf"{trial0} holds a trial that study .* does not have"
    with pytest.raises(ConfigError, match=refused):  # another storage
        tune(tiny_config, space, 1, out=out, storage=str(other), overrides=ONE_STEP)
    (out / "study.journal").unlink()
    with pytest.raises(ConfigError, match=refused):  # the journal deleted
        tune(tiny_config, space, 1, out=out, overrides=ONE_STEP)
    assert snapshot(trial0) == before
    assert not other.exists() and not (out / "study.journal").exists()


def test_a_storage_file_that_is_not_a_journal_is_refused_untouched(
    tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture
) -> None:
    # Issue 23 H9: Optuna's journal lines were appended to the user's file.
    notes = tmp_path / "notes.yaml"
    notes.write_text("model:\n  lr: 0.1\n")
    space, out = write_space(tmp_path / "s.yaml"), tmp_path / "out"
    argv = ["tune", "-c", str(tiny_config), "--space", str(space), "--trials", "1"]
    assert moderncnn_main([*argv, "--out", str(out), "--storage", str(notes)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--storage {notes} is not an Optuna journal (line 1 is not a journal record)" in err
    assert notes.read_text() == "model:\n  lr: 0.1\n" and not out.exists()


@pytest.mark.parametrize(
    ("args", "space", "message"),
    [
        (["--startup_trials", "-1"], None, "--startup_trials must be a whole number >= 0, got -1"),
        (["--warmup_epochs", "-2"], None, "--warmup_epochs must be a whole number >= 0, got -2"),
        (["--storage", "foo://bar"], None, "--storage foo://bar: Can't load plugin"),
        (["--storage", "sqlite:////nonexistent/dir/t.db"], None,
         "--storage sqlite:////nonexistent/dir/t.db: (sqlite3.OperationalError) unable to open"),
        (["--storage", "{tmp}/missing/t.journal"], None,
         "--storage {tmp}/missing/t.journal: the folder {tmp}/missing does not exist"),
        (["--storage", "{tmp}"], None, "--storage {tmp} is a folder"),
        (["--study_name", "/abs/path"], None, "--study_name '/abs/path': give a plain name"),
        (["--study_name", "../../x"], None, "--study_name '../../x': give a plain name"),
        ([], "data.init_args.batch_size: {choices: [64, 0]}",
         "s.yaml: data.init_args.batch_size=0: data: batch_size must be a positive integer, got 0"),
        ([], "data.init_args.batch_size: {low: 0, high: 64}",
         "with data.init_args.batch_size=0: data: batch_size must be a positive integer, got 0"),
        (["--trainer.devices", "2", "--trainer.strategy", "ddp"], None,
         "make a 2-process trial: set trainer.strategy: ddp_spawn"),
    ],
)  # fmt: skip
def test_bad_tune_arguments_are_one_line_and_write_nothing(
    tmp_path: Path, tiny_config: Path, capsys: pytest.CaptureFixture, args, space, message
) -> None:
    # Issue 23 M6, L9, L4: tracebacks, files written outside --out, a FAIL trial and a folder.
    space_file = write_space(tmp_path / "s.yaml", *([space + "\n"] if space else []))
    out = tmp_path / "out"
    argv = ["tune", "-c", str(tiny_config), "--space", str(space_file), "--trials", "1"]
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path) for a in args]
    assert moderncnn_main([*argv, "--out", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("moderncnn tune: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, out/ included
    assert not Path("/abs/path").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.slow
def test_a_combination_refused_in_a_trial_is_one_line_and_leaves_no_folder(
    fashion_mnist_dir: Path, tmp_path: Path, tiny_config: Path, capfd: pytest.CaptureFixture
) -> None:
    # Issue 23 L4: Optuna's "Trial failed" traceback came first, and an empty folder stayed.
    # Each value builds alone (checked before the first trial); only the pair does not.
    space = write_space(
        tmp_path / "s.yaml",
        "model.model: {choices: [resnet18_cifar, densenet121_cifar]}\n"
        "model.model_kwargs: {choices: [{}, {channels: [8, 16], layers: [1, 1]}]}\n",
    )
    params, out = read_space(space), tmp_path / "out"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def first_proposal(seed: int) -> list:
        study = optuna.create_study(direction="maximize", **make_sampler_and_pruner(seed, 5, 1))
        return [p.suggest(study.ask()) for p in params]

    bad = ["densenet121_cifar", {"channels": [8, 16], "layers": [1, 1]}]
    seed = next(s for s in range(100) if first_proposal(s) == bad)
    argv = ["tune", "-c", str(tiny_config), "--space", str(space), "--trials", "1"]
    assert moderncnn_main([*argv, "--out", str(out), "--study_name", "s", "--seed", str(seed)]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Trial 0 failed" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("moderncnn tune: error: ")]
    assert len(errors) == 1 and "trial trial0: " in errors[0] and "densenet" in errors[0], err
    assert not (out / "trials").exists()  # no empty trial folder, nor its parents
    (trial,) = load(out, "s").trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.params["model.model"] == bad[0]
