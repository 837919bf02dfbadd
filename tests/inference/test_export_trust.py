"""Exports are used only while they are what they say (issue 23, H7, M1, M2, L6, L11): a cached
ONNX export must still be the one made from this checkpoint, a sidecar must describe its graph,
an engine's refusal is one line with its reason, and a folder that cannot be written sends the
export to the user cache, by the artifact's full path."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moderncnn.cli import main as cli_main
from moderncnn.inference import load_model
from moderncnn.inference.runtimes import resolve_threads, sidecar_path
from moderncnn.io.errors import ConfigError, DataError
from moderncnn.training.module import ImageClassifier

pytest.importorskip("onnxruntime")
TINY = {"channels": [8, 16], "layers": [1, 1]}
GREY28 = {"image_size": 28, "resize_size": None, "mean": [0.286], "std": [0.353]}
NAMES = [f"class{i}" for i in range(10)]


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 10-class, 1-channel, 28 px ImageClassifier checkpoint; ``seed`` picks its weights."""
    torch.manual_seed(seed)
    module = ImageClassifier(
        "resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=TINY, class_names=NAMES,
        preprocess=GREY28,
    )  # fmt: skip
    with torch.no_grad():
        module.model.fc.bias.copy_(torch.linspace(-3, 3, 10).roll(seed))  # distinct top-1s
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return path


def eager(checkpoint: Path, x: torch.Tensor) -> torch.Tensor:
    return load_model(checkpoint, runtime="torch")(x)


def cached(folder: Path, stem: str = "run") -> Path:
    (found,) = folder.glob(f"{stem}.*.onnx")
    return found


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    return write_checkpoint(tmp_path / "a" / "run.ckpt", 0), write_checkpoint(
        tmp_path / "b" / "run.ckpt", 5
    )


@pytest.fixture
def users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own user cache; the ONNX exports' folder in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints" / "onnx"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def read_only(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Make writes into ``folders`` fail with EROFS, as on a read-only mount (which a test
    cannot make: root ignores folder permissions, mounting needs privileges)."""
    real = tempfile.mkstemp
    blocked = {f.resolve() for f in folders}

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() in blocked:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("moderncnn.io.atomic.tempfile.mkstemp", mkstemp)


# -- H7: a cached export is checked against the checkpoint it was made from -----------------------


def test_another_models_export_copied_over_the_cache_is_not_used(two_runs) -> None:
    a, b = two_runs
    x = torch.randn(3, 1, 28, 28)
    load_model(a, runtime="onnxruntime")(x)
    load_model(b, runtime="onnxruntime")(x)
    shutil.copyfile(cached(b.parent), cached(a.parent))  # B's graph under A's name and sidecar
    out = load_model(a, runtime="onnxruntime")(x)
    torch.testing.assert_close(out, eager(a, x), atol=1e-4, rtol=0)
    # ...and B's export with its own sidecar, renamed to A's key: the key in it is B's.
    shutil.copyfile(cached(b.parent), cached(a.parent))
    shutil.copyfile(sidecar_path(cached(b.parent)), sidecar_path(cached(a.parent)))
    out = load_model(a, runtime="onnxruntime")(x)
    torch.testing.assert_close(out, eager(a, x), atol=1e-4, rtol=0)


def test_a_truncated_cached_export_is_made_again(two_runs) -> None:
    a, _ = two_runs
    x = torch.randn(2, 1, 28, 28)
    load_model(a, runtime="onnxruntime")(x)
    export = cached(a.parent)
    export.write_bytes(export.read_bytes()[:1000])  # a write cut short
    out = load_model(a, runtime="onnxruntime")(x)
    torch.testing.assert_close(out, eager(a, x), atol=1e-4, rtol=0)
    assert cached(a.parent) == export and export.stat().st_size > 1000


def test_a_swapped_export_in_a_read_only_folder_runs_from_the_user_cache(
    two_runs, monkeypatch, users
) -> None:
    a, b = two_runs
    x = torch.randn(2, 1, 28, 28)
    load_model(a, runtime="onnxruntime")(x)
    load_model(b, runtime="onnxruntime")(x)
    shutil.copyfile(cached(b.parent), cached(a.parent))
    read_only(monkeypatch, a.parent)
    out = load_model(a, runtime="onnxruntime")(x)
    torch.testing.assert_close(out, eager(a, x), atol=1e-4, rtol=0)
    assert list(users.glob("run-*.onnx"))


def test_an_export_whose_card_names_other_classes_is_refused(tmp_path: Path, image: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "run.ckpt")
    onnx = tmp_path / "m.onnx"
    assert cli_main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(onnx)]) == 0
    meta = json.loads(sidecar_path(onnx).read_text())
    for n in (20, 5):  # more names: wrong labels; fewer: an IndexError
        card = {**meta["card"], "num_classes": n, "class_names": [f"c{i}" for i in range(n)]}
        sidecar_path(onnx).write_text(json.dumps({**meta, "card": card}))
        with pytest.raises(DataError, match=f"says {n} classes but the graph has 10 outputs"):
            load_model(onnx, runtime="onnxruntime")


def test_a_torchscript_export_whose_card_names_other_classes_is_refused(
    tmp_path: Path, image: Path, capsys
) -> None:
    ckpt = write_checkpoint(tmp_path / "run.ckpt")
    ts = tmp_path / "m.torchscript"
    assert (
        cli_main(["export", "--model", str(ckpt), "--format", "torchscript", "--out", str(ts)]) == 0
    )
    meta = json.loads(sidecar_path(ts).read_text())
    card = {**meta["card"], "num_classes": 5, "class_names": [f"c{i}" for i in range(5)]}
    sidecar_path(ts).write_text(json.dumps({**meta, "card": card}))
    assert cli_main(["predict", "--model", str(ts), str(image)]) == 1
    err = capsys.readouterr().err
    assert "gives (1, 10) logits but its card names 5 classes" in err and "Traceback" not in err


# -- M1: sidecars that disagree with their graph, engines that refuse a file ----------------------


@pytest.fixture
def fixed_batch_export(tmp_path: Path) -> Path:
    ckpt = write_checkpoint(tmp_path / "run.ckpt")
    onnx = tmp_path / "m.onnx"
    assert cli_main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(onnx)]) == 0
    return onnx


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"dynamic_batch": True}, "dynamic_batch but the graph takes batches of 1 only"),
        ({"dynamic_batch": "yes"}, "dynamic_batch must be true or false"),
        ({"input_size": [1, 32, 32]}, r"input_size \[1, 32, 32\] disagrees with its card"),
        ({"input_size": [3, 28]}, "input_size must be three positive ints"),
        (
            {
                "input_size": [3, 32, 32],
                "card.in_chans": 3,
                "card.preprocess": {
                    "image_size": 32,
                    "resize_size": None,
                    "mean": [0.5] * 3,
                    "std": [0.5] * 3,
                },
            },
            r"input size \[3, 32, 32\] but the graph takes \[1, 28, 28\]",
        ),  # fmt: skip
    ],
)
def test_a_sidecar_that_disagrees_with_its_graph_is_one_line(
    fixed_batch_export: Path, edit: dict, message: str, image: Path, capsys
) -> None:
    side = sidecar_path(fixed_batch_export)
    meta = json.loads(side.read_text())
    for key, value in edit.items():
        if key.startswith("card."):
            meta["card"][key[5:]] = value
        else:
            meta[key] = value
    side.write_text(json.dumps(meta))
    for runtime in ["onnxruntime", "openvino"]:
        if runtime == "openvino":
            pytest.importorskip("openvino")
        argv = ["predict", "--model", str(fixed_batch_export), str(image)]
        assert cli_main([*argv, "--runtime", runtime]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), err


def test_a_truncated_export_is_one_line_in_both_engines(fixed_batch_export: Path, capsys) -> None:
    fixed_batch_export.write_bytes(fixed_batch_export.read_bytes()[:500])
    for runtime, says in [("onnxruntime", "ONNX Runtime cannot load"), ("openvino", "OpenVINO")]:
        if runtime == "openvino" and not importlib.util.find_spec("openvino"):
            continue
        with pytest.raises(DataError, match=f"{says}.*export the model again"):
            load_model(fixed_batch_export, runtime=runtime)


def escaping_export(folder: Path) -> Path:
    """An ONNX file whose weight is 'external data' at ../../(...)/etc/passwd, with a sidecar."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in {
        "location": "../" * 30 + "etc/passwd",
        "offset": "0",
        "length": "64",
    }.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["images", "W"], ["logits"])], "g", [x],
                              [y], [weight])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "escape.onnx"
    path.write_bytes(model.SerializeToString())
    card = {"architecture": "resnet18_cifar", "num_classes": 4, "in_chans": 4}
    meta = {"format": "onnx", "input_size": [4, 1, 1], "dynamic_batch": False, "card": card}
    sidecar_path(path).write_text(json.dumps(meta))
    return path


def test_escaping_external_data_is_refused_in_one_line_with_the_engines_reason(
    tmp_path: Path,
) -> None:
    path = escaping_export(tmp_path / "d")
    with pytest.raises(DataError, match="ONNX Runtime cannot load .*escapes model directory"):
        load_model(path, runtime="onnxruntime")
    pytest.importorskip("openvino")
    # L11: OpenVINO's own words, not only the location of its check in its sources.
    with pytest.raises(DataError, match="resolves to '/etc/passwd' which is outside the base"):
        load_model(path, runtime="openvino")


# -- M2, L6: read-only folders --------------------------------------------------------------------


def test_a_read_only_mount_sends_the_export_to_the_user_cache(two_runs, monkeypatch) -> None:
    a, _ = two_runs
    read_only(monkeypatch, a.parent)  # EROFS, not PermissionError
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(
        load_model(a, runtime="onnxruntime")(x), eager(a, x), atol=1e-4, rtol=0
    )
    assert not list(a.parent.glob("*.onnx"))


def test_two_read_only_runs_of_one_name_keep_their_own_cached_exports(
    two_runs, monkeypatch, users
) -> None:
    a, b = two_runs
    read_only(monkeypatch, a.parent, b.parent)
    x = torch.randn(2, 1, 28, 28)
    load_model(a, runtime="onnxruntime")(x)
    load_model(b, runtime="onnxruntime")(x)
    first = {p.name: p.stat().st_mtime_ns for p in users.glob("run-*.onnx")}
    assert len(first) == 2  # not one evicting the other
    load_model(a, runtime="onnxruntime")(x)
    assert {p.name: p.stat().st_mtime_ns for p in users.glob("run-*.onnx")} == first  # reused


def test_no_writable_place_for_the_export_is_one_line(two_runs, monkeypatch, capsys, image, users):
    a, _ = two_runs
    users.mkdir(parents=True, exist_ok=True)
    read_only(monkeypatch, a.parent, users)
    argv = ["predict", "--model", str(a), str(image), "--runtime", "onnxruntime"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot write the ONNX export run." in err and "Read-only file system" in err
    assert "runtime 'torch'" in err and len(err.strip().splitlines()) == 1


# -- M8: threads ----------------------------------------------------------------------------------


def test_a_huge_thread_count_is_refused_before_any_engine_starts(two_runs, image, capsys) -> None:
    limit = 4 * (os.cpu_count() or 1)
    assert resolve_threads(limit) == limit
    with pytest.raises(ConfigError, match=f"threads must be at most {limit} .*got 50000"):
        resolve_threads(50000)
    a, _ = two_runs
    argv = ["predict", "--model", str(a), str(image), "--threads", "50000"]
    for runtime in ["onnxruntime", "torch"]:
        assert cli_main([*argv, "--runtime", runtime]) == 1
        assert "threads must be at most" in capsys.readouterr().err
