"""The training configs ship with the package and resolve by name from any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from moderncnn.cli import main
from moderncnn.io.configs import CONFIG_ROOT, find_config, list_configs
from moderncnn.io.errors import MissingFileError

REPO = Path(__file__).resolve().parents[1]


def test_names_resolve_from_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config("quickstart") == CONFIG_ROOT / "quickstart.yaml"
    assert find_config("configs/finetune.yaml") == CONFIG_ROOT / "finetune.yaml"
    assert find_config("fashion_mnist/resnet18") == CONFIG_ROOT / "fashion_mnist" / "resnet18.yaml"
    own = tmp_path / "quickstart.yaml"
    own.write_text("seed_everything: 1\n")
    assert find_config("quickstart.yaml") == Path("quickstart.yaml")  # a file on disk wins
    with pytest.raises(MissingFileError, match="moderncnn configs"):
        find_config("../quickstart")


def test_compare_and_tune_read_a_config_by_name(tmp_path, monkeypatch) -> None:
    """`moderncnn compare -c papers/degradation` works outside a checkout, like `fit -c`."""
    from moderncnn.training.trials import read_config

    monkeypatch.chdir(tmp_path)
    config = read_config("papers/degradation")
    assert config["trainer"]["max_steps"] > 0 and config["model"]["model"] == "plain56"
    with pytest.raises(MissingFileError, match="moderncnn configs"):
        read_config("papers/degradaton")


def test_from_config_by_name_outside_the_checkout(tmp_path, monkeypatch) -> None:
    from moderncnn import from_config

    monkeypatch.chdir(tmp_path)
    model, data, trainer = from_config("quickstart", **{"trainer.max_epochs": 1})
    assert model.hparams.model == "resnet18_cifar"
    assert trainer.max_epochs == 1


def test_fit_c_name_and_the_listing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", "quickstart", "--print_config"]) == 0
    assert "resnet18_cifar" in capsys.readouterr().out
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "quickstart  " in listing and "fashion_mnist/fast_cpu" in listing
    assert "Fine-tune an ImageNet-pretrained ResNet-18" in listing
    assert main(["fit", "-c", "quikstart"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "quickstart" in error and "`moderncnn configs`" in error
    assert not (tmp_path / "lightning_logs").exists()


def test_the_old_paths_still_work() -> None:
    """configs/ in a checkout is the package's folder: README, scripts and benchmarks name it."""
    assert (REPO / "configs").resolve() == CONFIG_ROOT
    assert (REPO / "configs" / "quickstart.yaml").is_file()


@pytest.mark.slow
def test_the_wheel_holds_every_config(tmp_path) -> None:
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside it
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(REPO / "moderncnn", source / "moderncnn", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, str(source), "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("moderncnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"moderncnn/configs/{name}.yaml" for name in list_configs()} <= names
    assert len(list_configs()) >= 10


def test_no_shipped_config_asks_for_more_workers_than_a_small_machine_has() -> None:
    # Issue 24: finetune asked for 4 image-decoding workers on a 2-core laptop.
    import yaml

    for name in list_configs():
        config = yaml.safe_load(find_config(name).read_text())
        workers = ((config or {}).get("data") or {}).get("init_args", {}).get("num_workers", 0)
        assert workers <= 2, f"{name}: num_workers {workers}"
