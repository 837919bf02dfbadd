"""Crafted cards, probe folders and sizes: one line each, before any memory is allocated
(issue 23: M3, M4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moderncnn import create_model
from moderncnn.cli import main as cli
from moderncnn.inference.loading import load_model, load_probe, save_model
from moderncnn.inference.probe import ProbeHead
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import ConfigError, DataError, ModernCNNError

TINY = {"channels": [8, 8, 8, 8], "layers": [1, 1, 1, 1]}
GREY = Preprocess(28, None, (0.5,), (0.25,))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    network = create_model("resnet18_cifar", num_classes=3, in_chans=1, **TINY)
    card = ModelCard("resnet18_cifar", 3, 1, TINY, ("a", "b", "c"), GREY)
    return save_model(network, tmp_path / "saved", card)


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


CARD_EDITS = {
    "model_kwargs 900 deep": {"model_kwargs": nested(900)},
    "preprocess a list": {"preprocess": [28, None]},
    "preprocess image_size 1e400": {"preprocess": {**GREY.to_dict(), "image_size": 1e400}},
    "preprocess image_size 100000": {"preprocess": {**GREY.to_dict(), "image_size": 100000}},
    "preprocess mean of text": {"preprocess": {**GREY.to_dict(), "mean": ["a"]}},
    "preprocess std 1e400": {"preprocess": {**GREY.to_dict(), "std": [1e400]}},
    "num_classes 1e400": {"num_classes": 1e400},
    "kind a list": {"kind": ["probe"]},
    "parent a list": {"parent": [1]},
    "class_names a number": {"class_names": 5},
    "probe head hidden text": {"kind": "probe", "head": {"num_features": 8, "hidden": "x"}},
}


@pytest.mark.parametrize("edit", CARD_EDITS.values(), ids=CARD_EDITS.keys())
def test_a_crafted_config_json_is_one_line(saved: Path, edit: dict) -> None:
    card = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(card | edit))
    with pytest.raises(DataError, match=r"config\.json"):
        load_model(saved)


def test_json_nested_100k_deep_is_one_line(saved: Path, capsys) -> None:
    (saved / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="not a card moderncnn writes"):
        load_model(saved)
    assert cli(["predict", "--model", str(saved), str(saved / "x.png")]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1


def probe_folder(folder: Path, backbone_weights: str, hidden: int | None = None) -> Path:
    parent = ModelCard(
        "resnet18_cifar", 0, 1, TINY, kind="backbone", preprocess=GREY,
        source={"weights": backbone_weights},
    )  # fmt: skip
    card = ModelCard(
        "linear_probe", 2, 1, class_names=("a", "b"), preprocess=GREY, kind="probe", parent=parent,
        head={"num_features": 8, "hidden": hidden, "stage": None},
    )  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "probe.json").write_text(json.dumps({"card": card.to_dict()}))
    save_file(ProbeHead(8, 2, hidden).state_dict(), str(folder / "probe_head.safetensors"))
    return folder


def test_a_probe_whose_backbone_is_itself_or_a_cycle_is_one_line(tmp_path: Path) -> None:
    itself = probe_folder(tmp_path / "self", str(tmp_path / "self"))
    with pytest.raises(DataError, match="leads back to a probe already in the chain"):
        load_model(itself)
    probe_folder(tmp_path / "a", str(tmp_path / "b"))
    probe_folder(tmp_path / "b", str(tmp_path / "a"))
    with pytest.raises(DataError, match=r"a -> .*b -> .*a"):
        load_model(tmp_path / "a")


def test_a_crafted_probe_head_file_is_read_by_the_safe_reader(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p", str(tmp_path / "missing.ckpt"))
    head = folder / "probe_head.safetensors"
    head.write_bytes(b"\xff" * 8 + b"{}")  # a header length of 2**64 - 1
    with pytest.raises(DataError, match="not a valid .safetensors file"):
        load_probe(folder)


# -- M4: sizes that multiply -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("resnet18_cifar", {"channels": [20000] * 4}),
        ("inception_v3", {"width_multiplier": 500.0}),
        ("resnet18_cifar", {"num_classes": 10**9}),
        ("resnet18_cifar", {"in_chans": 10**7}),
    ],
)
def test_a_model_too_big_to_build_is_refused_before_allocating(name: str, settings: dict) -> None:
    settings = {"num_classes": 10, **settings}
    with pytest.raises(ConfigError, match=r"billion weights .* above the 1 billion") as err:
        create_model(name, **settings)
    assert str(next(iter(settings.values())))[:6] in str(err.value)


def test_a_probe_head_too_big_is_refused(tmp_path: Path) -> None:
    folder = probe_folder(tmp_path / "p", str(tmp_path / "missing.ckpt"))
    info = json.loads((folder / "probe.json").read_text())
    info["card"]["head"] |= {"num_features": 2**20, "hidden": 2**20}  # 2**40 weights
    (folder / "probe.json").write_text(json.dumps(info))
    with pytest.raises(ModernCNNError, match="probe.json's head would have"):
        load_probe(folder)


def test_a_model_within_the_limit_still_builds_as_before() -> None:
    torch.manual_seed(0)
    a = create_model("resnet18_cifar", num_classes=10, **TINY)
    torch.manual_seed(0)
    b = create_model("resnet18_cifar", num_classes=10, **TINY)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)


def test_a_probe_head_with_a_renamed_weight_is_one_line(tmp_path: Path, capsys) -> None:
    folder = probe_folder(tmp_path / "p", str(tmp_path / "missing.ckpt"))
    state = ProbeHead(8, 2).state_dict()
    state["oet.0.weight"] = state.pop("net.0.weight")  # found by tests/test_fuzz_artifacts.py
    save_file(state, str(folder / "probe_head.safetensors"))
    with pytest.raises(DataError, match="does not fit probe.json") as err:
        load_probe(folder)
    assert "\n" not in str(err.value) and '"oet.0.weight"' in str(err.value)
    assert cli(["predict", "--model", str(folder), str(tmp_path / "x.png")]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_probe_stage_the_backbone_lacks_is_one_line(tmp_path: Path, saved: Path) -> None:
    folder = probe_folder(tmp_path / "p", str(saved))
    info = json.loads((folder / "probe.json").read_text())
    info["card"]["head"]["stage"] = 7  # found by tests/test_fuzz_artifacts.py: an IndexError
    (folder / "probe.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"probe\.json: probe stage 7 is not a stage of"):
        load_model(folder)
