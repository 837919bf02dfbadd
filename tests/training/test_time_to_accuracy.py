"""The training tools of time to accuracy: EMA of the weights, random erasing on the batch,
``precision: auto``, ``lr-find``, early stopping, ``fit --seeds``, TTA on image files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EMAWeightAveraging
from PIL import Image
from torchvision.transforms import v2

import moderncnn
from moderncnn.cli import main as moderncnn_main
from moderncnn.data import BatchAugment, FashionMNISTDataModule
from moderncnn.data.augment import BatchRandomErasing, PerImage
from moderncnn.io.checkpoint import read_checkpoint
from moderncnn.io.errors import ConfigError, MissingFileError
from moderncnn.training import precision as precision_module
from moderncnn.training.lr_find import lr_find, steepest_fall
from moderncnn.training.module import ImageClassifier, preprocess_of
from moderncnn.training.precision import PrecisionTrainer, auto_precision
from moderncnn.training.seeds import parse_seeds, pop_seeds

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # as tests/conftest.py
needs_data = pytest.mark.usefixtures("fashion_mnist_dir")  # skips where it is not installed
TINY = {"channels": [8, 16], "layers": [1, 1]}


def metrics_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def last_logged(folder: Path, column: str) -> float:
    values = [row[column] for row in metrics_rows(folder) if row.get(column)]
    return float(values[-1])


# -- EMA of the weights ------------------------------------------------------------------------


@needs_data
def test_ema_weights_differ_from_the_raw_ones_and_are_the_ones_evaluated(tmp_path: Path) -> None:
    data = FashionMNISTDataModule(
        data_dir=FASHION_MNIST_DIR, batch_size=64, train_subset=640, val_size=128, augmentations=[]
    )
    model = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY, lr=0.2, warmup_epochs=0
    )
    trainer = moderncnn.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        callbacks=[EMAWeightAveraging(decay=0.9)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    folder = tmp_path / "lightning_logs" / "version_0"
    last = folder / "checkpoints" / "last.ckpt"
    # weights_only=True, as every reader of ours: data_dir was given as a Path, which the saved
    # hyperparameters keep as a string (a pickled PosixPath there made the file unreadable).
    checkpoint = read_checkpoint(last)
    assert checkpoint["datamodule_hyper_parameters"]["data_dir"] == str(FASHION_MNIST_DIR)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    weights = [key for key in ema if key.endswith(".weight")]
    assert weights and sorted(ema) == sorted(raw)
    assert sum(not torch.equal(ema[key], raw[key]) for key in weights) == len(weights)

    # The validation logged after the last epoch ran on the EMA weights, not the raw ones.
    def val_loss(state: dict[str, torch.Tensor]) -> float:
        module = ImageClassifier.load_from_checkpoint(last)
        module.load_state_dict(state)
        plain = moderncnn.Trainer(
            moderncnn_defaults=False, logger=False, accelerator="cpu", enable_progress_bar=False
        )
        return plain.validate(module, datamodule=data, verbose=False)[0]["val_loss"]

    logged = last_logged(folder, "val_loss")
    assert val_loss(ema) == pytest.approx(logged, abs=1e-4)
    assert abs(val_loss(raw) - logged) > 1e-3
    # ... and what predict, export and features load is the EMA network.
    loaded = moderncnn.load_model(last).network.state_dict()
    assert all(torch.equal(loaded[key.removeprefix("model.")], ema[key]) for key in weights)


# -- random erasing, batched -----------------------------------------------------------------------


def test_random_erasing_runs_batched_and_erases_one_rectangle_per_image() -> None:
    torch.manual_seed(0)
    augment = BatchAugment([{"RandomErasing": {"p": 1.0, "value": 7}}])
    assert isinstance(augment.steps[0], BatchRandomErasing)
    images = torch.full((500, 2, 28, 28), 200, dtype=torch.uint8)
    erased = augment(images) == 7
    assert erased.dtype == torch.bool and erased.any((1, 2, 3)).all()  # p=1: every image
    assert torch.equal(erased[:, 0], erased[:, 1])  # the same rectangle in every channel
    for mask in erased[:50, 0]:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and box.sum() == mask.sum()  # one filled rectangle, nothing else

    # Same distribution of erased areas as torchvision's own transform, image by image.
    reference = v2.RandomErasing(p=1.0, value=7)
    theirs = torch.stack([reference(image) for image in images]) == 7
    ours_area, their_area = erased.float().mean((1, 2, 3)), theirs.float().mean((1, 2, 3))
    assert ours_area.mean() == pytest.approx(their_area.mean(), abs=0.02)
    assert ours_area.std() == pytest.approx(their_area.std(), abs=0.02)
    half = BatchAugment([{"RandomErasing": {"p": 0.5}}])(images)
    assert 0.4 < (half == 0).any((1, 2, 3)).float().mean() < 0.6


def test_random_erasing_with_noise_falls_back_and_a_bad_value_is_named() -> None:
    noise = BatchAugment([{"RandomErasing": {"value": "random"}}])
    assert isinstance(noise.steps[0], PerImage)  # torchvision's own, image by image
    three = BatchAugment([{"RandomErasing": {"value": [1, 2, 3]}}])
    with pytest.raises(ValueError, match=r"RandomErasing value \[1.0, 2.0, 3.0\] has 3 entries"):
        three(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


# -- precision: auto ------------------------------------------------------------------------------


def test_precision_auto_is_bf16_only_with_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    has = precision_module.has_bf16_units("cpu")
    assert auto_precision("cpu") == ("bf16-mixed" if has else "32-true")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert auto_precision("cpu") == "32-true"
    trainer = PrecisionTrainer(precision="auto", accelerator="cpu", logger=False)
    assert trainer.precision == "32-true"
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    trainer = PrecisionTrainer(precision="auto", accelerator="cpu", logger=False)
    assert trainer.precision == "bf16-mixed"
    assert moderncnn.Trainer(precision="auto", accelerator="cpu").precision == "bf16-mixed"
    assert PrecisionTrainer(precision="16-true", accelerator="cpu").precision == "16-true"


@needs_data
def test_bf16_and_fp32_runs_of_one_config_agree_on_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_config
) -> None:
    """Tolerance: 3 points of test accuracy on 1,024 test images after 2 short epochs (seed
    noise of this config is about 1 point); both must have learned (> 60%, chance is 10%)."""
    config = make_tiny_config(
        tmp_path / "c.yaml", train_subset=3000, max_epochs=2, limit_test_batches=16
    )
    accuracy = {}
    for precision in ("32-true", "bf16-mixed"):
        run = tmp_path / precision
        run.mkdir()
        monkeypatch.chdir(run)  # each run's lightning_logs/ in its own folder
        args = ["fit", "-c", str(config), "--test_after_fit=true"]
        args += [f"--trainer.precision={precision}"]
        assert moderncnn_main(args) == 0
        (folder,) = (run / "lightning_logs").glob("version_*")
        accuracy[precision] = last_logged(folder, "test_acc")
    assert min(accuracy.values()) > 0.6, accuracy
    assert abs(accuracy["32-true"] - accuracy["bf16-mixed"]) <= 0.03, accuracy


# -- lr-find -------------------------------------------------------------------------------------


@needs_data
def test_lr_find_writes_its_plot_and_a_value_and_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, make_tiny_config
) -> None:
    monkeypatch.chdir(tmp_path)
    config = make_tiny_config(tmp_path / "c.yaml", train_subset=2000)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert moderncnn_main(["lr-find", "-c", str(config), "--steps", "30", "--out", "lr.png"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (line,) = [line for line in out.splitlines() if line.startswith("model.lr: ")]
    suggested = float(line.split()[1])
    assert 1e-5 < suggested < 10
    assert "the loss is lowest at lr" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "lr.png"])

    result = lr_find(config, "--model.optimizer=adam", steps=20, plot=None)
    assert len(result.lrs) == len(result.losses) <= 20 and result.plot is None
    assert result.lrs == sorted(result.lrs) and result.lrs[0] < 1e-3  # the range, growing
    if result.suggestion is not None:
        assert result.suggestion <= result.lowest
    assert result.config_lr == 0.1


def test_lr_find_names_a_bad_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture, make_tiny_config
) -> None:
    with pytest.raises(ConfigError, match="need 0 < min_lr < max_lr"):
        lr_find(tmp_path / "c.yaml", min_lr=1.0, max_lr=0.1)
    with pytest.raises(MissingFileError, match="missing.yaml does not exist"):
        lr_find(tmp_path / "missing.yaml")
    config = make_tiny_config(tmp_path / "c.yaml", train_subset=256)
    bad = ["lr-find", "-c", str(config), "--data.init_args.batch_size=0"]
    bad += ["--out", str(tmp_path / "x.png")]
    assert moderncnn_main(bad) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("moderncnn lr-find: error: ") and "batch_size" in line
    assert not (tmp_path / "x.png").exists()


# -- early stopping preset -----------------------------------------------------------------------

PRESET = Path(__file__).parents[2] / "configs" / "presets" / "early_stopping.yaml"


@needs_data
def test_early_stopping_preset_stops_a_run_that_no_longer_improves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_config
) -> None:
    monkeypatch.chdir(tmp_path)
    # A learning rate too small to move the accuracy: no epoch improves on the first.
    config = make_tiny_config(tmp_path / "c.yaml", train_subset=256, max_epochs=20)
    preset = yaml.safe_load(PRESET.read_text())
    patience = preset["trainer"]["callbacks+"][0]["init_args"]["patience"]
    args = ["fit", "-c", str(config), "-c", str(PRESET), "--model.lr=1e-9"]
    args += ["--model.scheduler=none", "--trainer.limit_train_batches=1"]
    assert moderncnn_main(args) == 0
    rows = metrics_rows(tmp_path / "lightning_logs" / "version_0")
    epochs = {row["epoch"] for row in rows if row.get("val_acc")}
    assert len(epochs) == patience + 1 < 20


# -- fit --seeds ---------------------------------------------------------------------------------


@needs_data
def test_fit_seeds_runs_each_seed_and_writes_the_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, make_tiny_config
) -> None:
    monkeypatch.chdir(tmp_path)
    config = make_tiny_config(
        tmp_path / "c.yaml", train_subset=512, max_epochs=1, limit_test_batches=4
    )
    args = ["fit", "-c", str(config), "--test_after_fit=true", "--seeds", "2"]
    assert moderncnn_main(args) == 0
    root = tmp_path / "lightning_logs"
    with (root / "seeds_0.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["seed"] for row in rows] == ["0", "1"]
    assert [Path(row["run"]).name for row in rows] == ["version_0", "version_1"]
    for row in rows:  # each row is its own run's test accuracy
        assert float(row["test_acc"]) == pytest.approx(
            last_logged(Path(row["run"]), "test_acc"), abs=1e-5
        )
        assert yaml.safe_load((Path(row["run"]) / "config.yaml").read_text())[
            "seed_everything"
        ] == int(row["seed"])
    accuracies = [float(row["test_acc"]) for row in rows]
    mean = sum(accuracies) / 2
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies))  # n - 1 = 1
    summary = (root / "seeds_0.md").read_text()
    assert f"| test_acc | {mean:.2%} ± {std:.2%} |" in summary
    assert "test_acc" in capsys.readouterr().out
    # A second series keeps the first one's summary.
    assert moderncnn_main([*args[:-1], "3,4"]) == 0
    assert (root / "seeds_0.csv").read_text().count("\n") == 3
    assert (root / "seeds_1.csv").read_text().splitlines()[1].startswith("3,")


@pytest.mark.slow
@needs_data
def test_fit_seeds_resumes_each_seed_from_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, make_tiny_config
) -> None:
    # issue 23 H4: every seed resumed the newest last.ckpt (one run), giving "± 0.00%".
    monkeypatch.chdir(tmp_path)
    config = make_tiny_config(tmp_path / "c.yaml", train_subset=192, max_epochs=1)
    args = ["fit", "-c", str(config), "--model.scheduler=step", "--seeds", "2"]
    assert moderncnn_main(args) == 0
    root = tmp_path / "lightning_logs"
    assert moderncnn_main([*args, "--ckpt_path", "last", "--trainer.max_epochs=2"]) == 0
    for seed, version in ((0, 2), (1, 3)):
        resumed = yaml.safe_load((root / f"version_{version}" / "config.yaml").read_text())
        assert resumed["seed_everything"] == seed
        assert Path(resumed["ckpt_path"]).parts[-3] == f"version_{seed}"  # its own run
    # One file for every seed cannot be right; a changed seed is refused like a changed lr.
    own = root / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert moderncnn_main([*args, "--ckpt_path", str(own)]) == 1
    assert (
        "with --seeds: one checkpoint cannot continue every seed's run" in capsys.readouterr().err
    )
    single = ["fit", "-c", str(config), "--model.scheduler=step", "--trainer.max_epochs=2"]
    assert moderncnn_main([*single, "--seed_everything=1", "--ckpt_path", str(own)]) == 1
    assert "seed_everything: 0 in the checkpoint, 1 now" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        f"version_{i}" for i in range(4)
    ]


def test_resume_check_compares_the_seed_also_of_older_checkpoints(tmp_path: Path) -> None:
    from moderncnn.training.preflight import UNKNOWN, check_resume_settings, recorded_seed

    module = ImageClassifier("resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY)
    saved = {"hyper_parameters": dict(module.hparams), "state_dict": {}}
    path = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    check_resume_settings(path, {**saved, "seed_everything": 3}, module, 3)
    with pytest.raises(ConfigError, match="seed_everything: 3 in the checkpoint, 4 now"):
        check_resume_settings(path, {**saved, "seed_everything": 3}, module, 4)
    # Written before checkpoints recorded it: the run folder's config.yaml says.
    assert recorded_seed(saved, path) is UNKNOWN
    check_resume_settings(path, saved, module, 4)
    path.parent.mkdir(parents=True)
    (path.parent.parent / "config.yaml").write_text("seed_everything: 7\nmodel: {}\n")
    assert recorded_seed(saved, path) == 7
    with pytest.raises(ConfigError, match="seed_everything: 7 in the checkpoint, 4 now"):
        check_resume_settings(path, saved, module, 4)


def test_seeds_arguments_are_checked() -> None:
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("5,7,9") == [5, 7, 9]
    assert pop_seeds(["fit", "-c", "x.yaml", "--seeds=2"]) == ([0, 1], ["fit", "-c", "x.yaml"])
    assert pop_seeds(["fit", "-c", "x.yaml"]) == (None, ["fit", "-c", "x.yaml"])
    for bad in ("0", "x", "1,1", "-1,2", "1000"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="leave out --seed_everything"):
        pop_seeds(["fit", "--seeds", "2", "--seed_everything=3"])
    assert moderncnn_main(["fit", "-c", "x.yaml", "--seeds", "none"]) == 1


# -- TTA on image files --------------------------------------------------------------------------


@needs_data
def test_predict_on_files_with_tta_averages_the_flipped_view(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR, train_subset=64, val_size=0)
    data.setup("fit")
    images = data.train_set.images[:3]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image[0].numpy()).save(files[-1])
    module = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY,
        class_names=data.class_names, preprocess=preprocess_of(data),
    )  # fmt: skip
    torch.manual_seed(0)
    for p in module.parameters():
        p.data.normal_(0, 0.3)
    path = _checkpoint(module, tmp_path / "m.ckpt")
    loaded = moderncnn.load_model(path)
    plain = loaded.predict(files, topk=10)
    flipped = [tmp_path / f"{i}f.png" for i in range(3)]
    for source, target in zip(files, flipped, strict=True):
        Image.open(source).transpose(Image.FLIP_LEFT_RIGHT).save(target)
    mirror = loaded.predict(flipped, topk=10)
    both = loaded.predict(files, topk=10, tta=["hflip"])
    for p, m, b in zip(plain, mirror, both, strict=True):
        expected = {c: (q + dict(zip(m.classes, m.probabilities, strict=True))[c]) / 2
                    for c, q in zip(p.classes, p.probabilities, strict=True)}  # fmt: skip
        got = dict(zip(b.classes, b.probabilities, strict=True))
        assert got == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="tta must be a list of hflip, shift"):
        loaded.predict(files, tta=["rotate"])
    assert moderncnn_main(["predict", "--model", str(path), str(files[0]), "--tta=hflip"]) == 0
    assert "1 images classified" in capsys.readouterr().out


def _checkpoint(module: ImageClassifier, path: Path) -> Path:
    """``module`` saved as a Lightning checkpoint with its card, as ``moderncnn fit`` saves it."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


# -- time to accuracy: the fit clock -------------------------------------------------------------


@needs_data
def test_fit_clock_logs_the_seconds_since_fit_started_with_each_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_config
) -> None:
    monkeypatch.chdir(tmp_path)
    config = make_tiny_config(tmp_path / "c.yaml", train_subset=256, max_epochs=3)
    clock = "--trainer.callbacks+=moderncnn.training.callbacks.FitClock"
    assert moderncnn_main(["fit", "-c", str(config), clock, "--test_after_fit=true"]) == 0
    rows = metrics_rows(tmp_path / "lightning_logs" / "version_0")
    clocked = [(float(r["fit_seconds"]), r["epoch"]) for r in rows if r.get("fit_seconds")]
    assert [epoch for _, epoch in clocked] == ["0", "1", "2"]  # one per epoch, not the test's
    seconds = [s for s, _ in clocked]
    assert 0 < seconds[0] < seconds[1] < seconds[2] < 600
    assert all(r.get("val_acc") for r in rows if r.get("fit_seconds"))  # beside its val_acc


def test_the_suggestion_is_the_steepest_fall_per_decade_not_per_unit_of_lr() -> None:
    # A loss that falls fastest around lr = 0.1 (per decade) on an exponential sweep, lowest at
    # 1, and drifts down slowly before that (as a real one does while the rate is small).
    lrs = [10 ** (-5 + 6 * i / 99) for i in range(100)]
    losses = [
        2.3 - 0.01 * (math.log10(lr) + 5) - 1.0 / (1 + math.exp(-3 * (math.log10(lr) + 1)))
        for lr in lrs
    ]
    losses = [loss if lr < 1 else loss + 5 * (lr - 1) for loss, lr in zip(losses, lrs, strict=True)]
    steepest, lowest = steepest_fall(lrs, losses)
    assert 0.07 < lrs[steepest] < 0.15 and 0.5 < lrs[lowest] <= 1.0
    # Per unit of lr (Lightning's suggestion()) the same curve points at the small-lr end.
    per_unit = torch.gradient(torch.tensor(losses[10:-1]), spacing=[torch.tensor(lrs[10:-1])])[0]
    assert lrs[10 + int(per_unit.argmin())] < 0.01
    assert steepest_fall(lrs, [2.3] * 100) == (None, None)  # flat: no suggestion


@needs_data
def test_lr_find_curve_starts_at_the_real_loss(tmp_path: Path, make_tiny_config) -> None:
    """With rates too small to move the weights, the loss stays at its first value: the curve
    must be flat from its first point (Lightning's own smoothing starts at about half)."""
    config = make_tiny_config(tmp_path / "c.yaml", train_subset=2000)
    result = lr_find(config, min_lr=1e-10, max_lr=1e-9, steps=30, plot=None)
    later = sum(result.losses[10:]) / len(result.losses[10:])
    assert result.losses[0] == pytest.approx(later, rel=0.1)
    assert all(loss == pytest.approx(later, rel=0.1) for loss in result.losses)
