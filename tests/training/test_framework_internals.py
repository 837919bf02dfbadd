"""Contract tests: one per private Lightning/torch name in moderncnn.training.framework_internals.

Each fails, naming the name, when the framework renames, removes or changes it, so an upgrade
past the tested range (pyproject.toml) is caught here rather than in a lost last.ckpt.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import moderncnn
from moderncnn.training import framework_internals as fw

ROOT = Path(moderncnn.__file__).parent


def test_precision_input_is_what_trainer_precision_is_typed_as() -> None:
    annotation = inspect.signature(L.Trainer.__init__).parameters["precision"].annotation
    assert annotation == fw.PrecisionInput | None
    assert "bf16-mixed" in str(fw.PrecisionInput)


@pytest.mark.parametrize("logger_class", [CSVLogger, TensorBoardLogger])
def test_logger_version_is_chosen_lazily_and_can_be_set(tmp_path: Path, logger_class) -> None:
    logger = logger_class(tmp_path)
    assert not fw.logger_version_given(logger)  # `_version` is None until first asked
    fw.set_logger_version(logger, 7)
    assert fw.logger_version_given(logger)
    assert logger.version == 7 and logger.log_dir.endswith("version_7")
    assert fw.logger_version_given(logger_class(tmp_path, version=3))


def test_last_checkpoint_saved_is_set_by_a_save_only() -> None:
    callback = ModelCheckpoint()
    assert fw.checkpoint_saved_by_this_process(callback) == ""
    assert "_last_checkpoint_saved" in vars(callback)  # Lightning's attribute, reset in __init__
    source = inspect.getsource(ModelCheckpoint._save_checkpoint)
    assert "self._last_checkpoint_saved = filepath" in source


def test_fit_loop_keeps_its_data_fetcher() -> None:
    source = inspect.getsource(type(L.Trainer(logger=False).fit_loop))
    assert "self._data_fetcher" in source
    assert re.search(r"iter\(self\._data_fetcher\)|iter\(data_fetcher\)", source)


def test_spawn_strategies_use_the_multiprocessing_launcher() -> None:
    spawn = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    assert fw.spawns_its_processes(spawn)
    script = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert not fw.spawns_its_processes(script)


def test_scheduler_last_lr_is_what_get_last_lr_answers() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    fw.set_scheduler_last_lr(scheduler, [0.1, 0.01])
    assert scheduler.get_last_lr() == [0.1, 0.01]


def test_lightning_cli_calls_parse_ckpt_path_between_parsing_and_instantiation() -> None:
    source = inspect.getsource(LightningCLI.__init__)
    order = [source.index(call) for call in ("parse_arguments(", "_parse_ckpt_path()")]
    assert order == sorted(order) and source.index("instantiate_classes()") > order[-1]
    assert fw.ConfigNamesTheModelCLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path


@pytest.mark.parametrize("name", fw.MODEL_CHECKPOINT_INTERNALS)
def test_model_checkpoint_keeps_what_resumable_model_checkpoint_uses(name: str) -> None:
    assert hasattr(ModelCheckpoint, name) or name in vars(ModelCheckpoint())


def test_no_other_module_reaches_a_private_lightning_or_torch_name() -> None:
    """The fence itself: private names of the frameworks appear in framework_internals only."""
    pattern = re.compile(
        r"from (lightning|torch|optuna)\S* import [^\n]*\b_[A-Za-z]"
        r"|\b(torch|L|lightning|optuna)(\.\w+)*\._[a-z]\w*"
        r"|\.(_version|_last_checkpoint_saved|_data_fetcher|_last_lr|_storage|_trainer)\b"
    )
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in ROOT.rglob("*.py")
        if path.name != "framework_internals.py"
        for match in pattern.finditer(path.read_text())
    ]
    assert offenders == []


def test_every_dependency_has_an_upper_bound_the_installed_version_meets() -> None:
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    from importlib.metadata import PackageNotFoundError, version

    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [
        dep for group in project["optional-dependencies"].values() for dep in group
    ]
    for text in listed:
        req = requirements.Requirement(text)
        if req.name == "moderncnn":
            continue
        assert any(spec.operator in ("<", "<=", "~=") for spec in req.specifier), text
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            continue
        assert req.specifier.contains(installed, prereleases=True), f"{text}: {installed}"
