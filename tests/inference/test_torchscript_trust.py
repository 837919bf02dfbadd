"""TorchScript is code: it loads only from a file the user named ``.torchscript`` whose bytes are a
TorchScript archive, never because a side file says so (issue 23, H1).

The payload here is a scripted ``forward`` that overwrites a file of the user's through
``torch.from_file(..., shared=True)``; the first test shows it is live when loaded as
TorchScript on purpose, so the refusals below are refusals of a real attack.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from moderncnn.cli import main as cli_main
from moderncnn.inference import load_model
from moderncnn.inference.export import export_model
from moderncnn.inference.runtimes import load_exported, sidecar_path
from moderncnn.io.errors import ModernCNNError
from moderncnn.models import create_model

VICTIM_BYTES = b"the user's notes\n"


class Overwriter(nn.Module):
    """Looks like a 10-class classifier; zeroes the first bytes of ``victim`` when run."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x: Tensor) -> Tensor:
        written = torch.from_file(self.victim, shared=True, size=4, dtype=torch.uint8).fill_(0)
        return x.flatten(1)[:, :10] + written[0].float()  # used, so the graph keeps the write


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(a genuine sidecar's content as ``card.json``, the hostile TorchScript file, the victim)."""
    victim = tmp_path / "notes.txt"
    victim.write_bytes(VICTIM_BYTES)
    model = create_model("resnet18_cifar", num_classes=10, channels=(8, 8, 8, 8), layers=(1,) * 4)
    genuine = export_model(model, tmp_path / "genuine.torchscript", "torchscript", (3, 32, 32))
    payload = tmp_path / "payload.torchscript"
    torch.jit.save(torch.jit.script(Overwriter(str(victim))), str(payload))
    return sidecar_path(genuine), payload, victim


def _plant(payload: Path, side: Path, as_file: Path, **sidecar: object) -> Path:
    shutil.copy(payload, as_file)
    meta = {**json.loads(side.read_text()), **sidecar}
    sidecar_path(as_file).write_text(json.dumps(meta))
    return as_file


def test_the_payload_is_live_when_named_torchscript(hostile: tuple[Path, Path, Path]) -> None:
    side, payload, victim = hostile
    exported = load_exported(_plant(payload, side, payload.with_name("trusted.torchscript")))
    exported(torch.zeros(1, 3, 32, 32))
    assert victim.read_bytes()[:4] == b"\0\0\0\0"  # the user trusted it; it ran


@pytest.mark.parametrize("name", ["model.ckpt", "model.onnx", "model.safetensors", "model.pth"])
def test_a_sidecar_never_makes_a_file_torchscript(
    hostile: tuple[Path, Path, Path], name: str, tmp_path: Path
) -> None:
    side, payload, victim = hostile
    planted = _plant(payload, side, tmp_path / name, format="torchscript")
    for runtime in ("auto", "torch", "onnxruntime"):
        with pytest.raises(ModernCNNError):
            load_model(planted, runtime=runtime).predict([])
        with pytest.raises(ModernCNNError):
            load_exported(planted, runtime=runtime)
    assert victim.read_bytes() == VICTIM_BYTES


@pytest.mark.parametrize("command", ["predict", "export", "explain"])
def test_commands_refuse_the_planted_checkpoint_in_one_line(
    hostile: tuple[Path, Path, Path],
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    side, payload, victim = hostile
    planted = _plant(payload, side, tmp_path / "model.ckpt", format="torchscript")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(image)
    argv = {
        "predict": ["predict", "--model", str(planted), str(image)],
        "export": [
            "export",
            "--model",
            str(planted),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "x.onnx"),
        ],
        "explain": ["explain", "--model", str(planted), str(image), "--out", str(tmp_path)],
    }[command]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert victim.read_bytes() == VICTIM_BYTES
    assert not (tmp_path / "x.onnx").exists()


def test_a_torchscript_name_on_other_bytes_is_refused_before_jit_load(tmp_path: Path) -> None:
    """A ``torch.save`` checkpoint renamed ``.torchscript`` is a zip too, but holds no code/."""
    fake = tmp_path / "weights.torchscript"
    torch.save({"w": torch.ones(2)}, fake)
    with pytest.raises(ModernCNNError, match="not a TorchScript archive"):
        load_exported(fake)
    garbage = tmp_path / "garbage.torchscript"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModernCNNError, match="not a TorchScript archive"):
        load_exported(garbage)


def test_a_sidecar_that_disagrees_with_the_extension_is_refused(
    hostile: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    side, payload, victim = hostile
    planted = _plant(payload, side, tmp_path / "m.onnx")  # sidecar says torchscript
    with pytest.raises(ModernCNNError, match="does not belong to this file"):
        load_model(planted)
    assert victim.read_bytes() == VICTIM_BYTES


def test_an_export_is_named_for_its_format(tmp_path: Path) -> None:
    model = create_model("resnet18_cifar", num_classes=3, channels=(8, 8, 8, 8), layers=(1,) * 4)
    for out, format in (("m.pt", "torchscript"), ("m.ckpt", "onnx"), ("m.onnx", "torchscript")):
        with pytest.raises(ModernCNNError, match="ending in"):
            export_model(model, tmp_path / out, format, (3, 32, 32))
        assert not (tmp_path / out).exists()


def test_the_checkpoint_reader_never_hands_a_torchscript_archive_to_jit_load(
    hostile: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """``torch.load(weights_only=True)`` dispatches a TorchScript zip to ``torch.jit.load``
    (which runs a scripted ``__setstate__``): our reader refuses it first."""
    from moderncnn.io.checkpoint import read_checkpoint

    _, payload, _ = hostile
    for name in ("model.ckpt", "weights.pth"):
        shutil.copy(payload, tmp_path / name)
        with pytest.raises(ModernCNNError, match="TorchScript archive"):
            read_checkpoint(tmp_path / name)
