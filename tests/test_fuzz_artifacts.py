"""Property-based fuzzing of the artifacts a user is handed by someone else (issue 23): model
cards, export sidecars, probe folders and run folders. Whatever they hold, reading them
succeeds or raises one :class:`ModernCNNError` in one line (through the CLI: exit 1 and one
line on stderr, no traceback), and nothing is written outside the output that was asked for.

- cards: a saved model folder's ``config.json`` with one to three keys replaced by odd values
  (the values of tests/test_fuzz.py, and sizes, kinds, parents, file names) or its bytes
  mutated, through ``read_card``, ``load_model`` and ``moderncnn predict --checkpoint``;
- sidecars: a small ONNX export's ``model.onnx.json`` edited the same way, through
  ``load_model`` and ``read_card``;
- probe folders: ``probe.json`` edited (its backbone pointing at itself, at its head file, at
  a missing or a device file...) and ``probe_head.safetensors`` mutated, through ``load_model``
  and ``moderncnn predict --checkpoint``;
- run folders: ``run.json`` edited, each CSV's bytes mutated, files replaced by symlinks (out
  of the folder, to the folder itself, dangling, in a loop), through ``moderncnn report``,
  ``moderncnn plot`` and the functions behind them.

Budgets as in tests/test_fuzz.py: a few seconds each in CI, the large one under ``-m fuzz``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, seed
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save
from test_fuzz import FUZZ_SEED, ODD_VALUES, budget, mutated_bytes, set_key, time_limit

from moderncnn import create_model
from moderncnn.cli import main as cli
from moderncnn.inference.loading import load_model, read_card, save_model
from moderncnn.inference.probe import ProbeHead
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.io.errors import ModernCNNError

TINY = {"channels": [4], "layers": [1]}
GREY = Preprocess(28, None, (0.5,), (0.25,))
SECRET = "root:x:0:0:SECRET-LINE:/root:/bin/bash\n"
# Placeholders in the files' text, made the example's paths when written.
PLACES = {"@backbone": "backbone", "@probe": "probe", "@head": "probe/probe_head.safetensors",
          "@missing": "missing.ckpt", "@secret": "outside/passwd"}  # fmt: skip


def one_line(err: BaseException) -> None:
    text = str(err).strip()
    assert text and "\n" not in text, repr(text[:2000])


def attempt(call: Callable[[], object], what: str) -> object:
    """``call()``'s result, or None when it raised a one-line ModernCNNError (anything else
    propagates and fails the example)."""
    with time_limit(60, what):
        try:
            return call()
        except ModernCNNError as err:
            one_line(err)
            return None


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with time_limit(120, f"moderncnn {args[0]}"):
            code = cli(args)
    text = err.getvalue()
    assert "Traceback" not in text, text[-3000:]
    assert code in (0, 1), (code, text[-2000:])
    if code == 1:
        errors = [line for line in text.splitlines() if line.startswith(f"moderncnn {args[0]}:")]
        assert len(errors) == 1 and len(text.strip().splitlines()) == 1, text[-3000:]
    return code, text


def snapshot(root: Path, output: Path | None = None) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed) but ``output``: what it is, what it holds."""
    state: dict[str, tuple] = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            if output is not None and (path == output or output in path.parents):
                continue
            key = str(path.relative_to(root))
            if path.is_symlink():
                state[key] = ("link", os.readlink(path))
            elif path.is_file():
                state[key] = ("file", path.read_bytes(), path.stat().st_mode)
            else:
                state[key] = ("folder", path.stat().st_mode)
    return state


def place(text: bytes, root: Path) -> bytes:
    for token, relative in PLACES.items():
        text = text.replace(token.encode(), str(root / relative).encode())
    return text


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def json_text(values: dict) -> bytes:
    return json.dumps(values, indent=1).encode()


@st.composite
def edited_json(draw, base: dict, keys: list[str], values: st.SearchStrategy) -> bytes:
    """``base`` with 1-3 keys set to odd values, or its JSON text with bytes mutated."""
    if draw(st.booleans()):
        return draw(mutated_bytes([json_text(base)]))
    edited = json.loads(json.dumps(base))
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        set_key(edited, key, copy.deepcopy(draw(values)))  # CARD itself stays as it is
    return json_text(edited)


# -- cards: a saved model folder's config.json -------------------------------------------------

CARD = ModelCard("resnet18_cifar", 3, 1, TINY, ("a", "b", "c"), GREY).to_dict()
CARD_KEYS = [
    "format", "architecture", "num_classes", "in_chans", "model_kwargs", "model_kwargs.channels",
    "model_kwargs.layers", "model_kwargs.stem", "model_kwargs.weights",
    "model_kwargs.width_multiplier", "class_names", "preprocess", "preprocess.image_size",
    "preprocess.resize_size", "preprocess.mean", "preprocess.std", "kind", "parent",
    "parent.architecture", "head", "head.num_features", "head.hidden", "head.stage", "source",
    "source.weights", "source.weights_sha256", "metrics",
]  # fmt: skip
CARD_VALUES = st.one_of(
    ODD_VALUES,
    st.sampled_from(
        ["resnet18_cifar", "densenet121_cifar", "linear_probe", "probe", "backbone",
         "classifier", "moderncnn-card-1", 4096, 28, 4, 8, [0.5], [0.5, 0.5, 0.5], [1e-30],
         ["a", "b"], ["a", "b", "c"], [4, 4], [20000] * 4, [10**6], CARD, nested(70),
         "@backbone", "@probe", "@head", "@missing", "@secret", "/dev/zero", "imagenet"]
    ),
)  # fmt: skip


@functools.cache
def saved_weights() -> bytes:
    torch.manual_seed(0)
    network = create_model("resnet18_cifar", num_classes=3, in_chans=1, **TINY)
    return save({k: v.contiguous() for k, v in network.state_dict().items()})


def write_world(root: Path) -> Path:
    """What every example has beside the files under test: an image and a secret outside."""
    (root / "outside").mkdir()
    (root / "outside" / "passwd").write_text(SECRET)
    Image.new("L", (20, 12), 90).save(root / "image.png")
    return root / "image.png"


def check_card(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        image = write_world(root)
        saved = root / "saved"
        saved.mkdir()
        (saved / "config.json").write_bytes(place(text, root))
        (saved / "model.safetensors").write_bytes(saved_weights())
        before = snapshot(root)
        attempt(lambda: read_card(saved), "read_card")
        attempt(lambda: load_model(saved), "load_model")
        run_cli(["predict", "--model", str(saved), str(image), "--runtime", "torch"])
        assert snapshot(root) == before


CARDS = edited_json(CARD, CARD_KEYS, CARD_VALUES)


@seed(FUZZ_SEED)
@budget(40)
@given(text=CARDS)
def test_crafted_cards_load_or_are_refused_in_one_line(text: bytes) -> None:
    check_card(text)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(2_000)
@given(text=CARDS)
def test_crafted_cards_load_or_are_refused_in_one_line_big_budget(text: bytes) -> None:
    check_card(text)


def test_the_unedited_card_loads_and_predicts(tmp_path: Path) -> None:
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_bytes(json_text(CARD))
    (tmp_path / "saved" / "model.safetensors").write_bytes(saved_weights())
    assert load_model(tmp_path / "saved").class_names == ["a", "b", "c"]
    image = write_world(tmp_path)
    assert run_cli(["predict", "--model", str(tmp_path / "saved"), str(image)])[0] == 0


# -- export sidecars: model.onnx.json ----------------------------------------------------------


@functools.cache
def onnx_export() -> tuple[bytes, dict]:
    from moderncnn.inference.export import export_model

    torch.manual_seed(0)
    network = create_model("resnet18_cifar", num_classes=3, in_chans=1, **TINY).eval()
    card = ModelCard("resnet18_cifar", 3, 1, TINY, ("a", "b", "c"), GREY)
    with tempfile.TemporaryDirectory() as folder:
        out = export_model(network, Path(folder) / "model.onnx", "onnx", card=card)
        return out.read_bytes(), json.loads(Path(f"{out}.json").read_text())


SIDECAR_KEYS = [
    "format", "model", "input_size", "dynamic_batch", "input_name", "output_name", "opset",
    "class_names", "precision", "export_key", "card", *(f"card.{key}" for key in CARD_KEYS),
]  # fmt: skip


@st.composite
def sidecars(draw) -> bytes:
    return draw(edited_json(onnx_export()[1], SIDECAR_KEYS, CARD_VALUES))


def check_sidecar(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_world(root)
        model = root / "model.onnx"
        model.write_bytes(onnx_export()[0])
        Path(f"{model}.json").write_bytes(place(text, root))
        before = snapshot(root)
        attempt(lambda: read_card(model), "read_card")
        attempt(lambda: load_model(model, runtime="onnxruntime"), "load_model")
        assert snapshot(root) == before


@seed(FUZZ_SEED)
@budget(30)
@given(text=sidecars())
def test_crafted_sidecars_load_or_are_refused_in_one_line(text: bytes) -> None:
    check_sidecar(text)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(1_000)
@given(text=sidecars())
def test_crafted_sidecars_load_or_are_refused_in_one_line_big_budget(text: bytes) -> None:
    check_sidecar(text)


# -- probe folders: probe.json + probe_head.safetensors ----------------------------------------


def probe_info() -> dict:
    parent = ModelCard(
        "resnet18_cifar", 0, 1, TINY, kind="backbone", preprocess=GREY,
        source={"weights": "@backbone"},
    )  # fmt: skip
    card = ModelCard(
        "linear_probe", 2, 1, class_names=("a", "b"), preprocess=GREY, kind="probe",
        parent=parent, head={"num_features": 4, "hidden": None, "stage": None},
    )  # fmt: skip
    return {"card": card.to_dict()}


PROBE_KEYS = [f"card.{key}" for key in CARD_KEYS] + [
    "card", "card.parent.source.weights", "card.parent.kind", "card.parent.num_classes",
    "card.parent.model_kwargs", "card.parent.in_chans", "card.parent.source.weights_sha256",
]  # fmt: skip
PROBE_HEAD_BYTES = save(ProbeHead(4, 2).state_dict())
PROBES = st.tuples(
    edited_json(probe_info(), PROBE_KEYS, CARD_VALUES),
    st.one_of(st.just(PROBE_HEAD_BYTES), mutated_bytes([PROBE_HEAD_BYTES])),
)


def check_probe(files: tuple[bytes, bytes]) -> None:
    text, head = files
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        image = write_world(root)
        backbone = create_model("resnet18_cifar", num_classes=3, in_chans=1, **TINY)
        save_model(backbone, root / "backbone", ModelCard("resnet18_cifar", 3, 1, TINY))
        probe = root / "probe"
        probe.mkdir()
        (probe / "probe.json").write_bytes(place(text, root))
        (probe / "probe_head.safetensors").write_bytes(head)
        before = snapshot(root)
        attempt(lambda: load_model(probe), "load_model")
        run_cli(["predict", "--model", str(probe), str(image), "--runtime", "torch"])
        assert snapshot(root) == before


@seed(FUZZ_SEED)
@budget(30)
@given(files=PROBES)
def test_crafted_probe_folders_load_or_are_refused_in_one_line(files: tuple[bytes, bytes]) -> None:
    check_probe(files)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(1_000)
@given(files=PROBES)
def test_crafted_probe_folders_load_or_are_refused_in_one_line_big_budget(
    files: tuple[bytes, bytes],
) -> None:
    check_probe(files)


def test_the_unedited_probe_folder_loads() -> None:
    check_probe((json_text(probe_info()), PROBE_HEAD_BYTES))  # and load_model's result:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        backbone = create_model("resnet18_cifar", num_classes=3, in_chans=1, **TINY)
        save_model(backbone, root / "backbone", ModelCard("resnet18_cifar", 3, 1, TINY))
        (root / "probe").mkdir()
        (root / "probe" / "probe.json").write_bytes(place(json_text(probe_info()), root))
        (root / "probe" / "probe_head.safetensors").write_bytes(PROBE_HEAD_BYTES)
        assert load_model(root / "probe").class_names == ["a", "b"]


# -- run folders: run.json, CSVs, links ---------------------------------------------------------

RUN_TEXT = {
    "metrics.csv": b"epoch,step,train_loss,val_acc,val_loss,lr-SGD\n0,3,2.1,,,\n0,3,,0.25,2.0,\n"
    b",3,,,,0.1\n1,7,1.9,,,\n1,7,,0.5,1.8,\n",
    "confusion_matrix.csv": b"true \\ predicted,a,b\na,3,1\nb,0,4\n",
    "per_class_accuracy.csv": b"class,accuracy\na,0.75\nb,1.0\n",
    "top_losses.csv": b"test_index,true,predicted,loss,p_true,p_predicted\n5,a,b,3.2,0.04,0.9\n",
    "config.yaml": b"seed_everything: 0\nmodel:\n  model: resnet18_cifar\n",
    "hparams.yaml": b"model: resnet18_cifar\nnum_classes: 2\n",
}
FACTS = {
    "model": "resnet18_cifar", "parameters": 5000, "epochs": 2, "fit_seconds": 12.5,
    "class_names": ["a", "b"], "macs": 1e6, "input_size": [1, 28, 28],
    "hardware": {"cpu": "x", "cpu_cores": 2}, "test_metrics": {"test_acc": 0.9, "test_loss": 0.3},
    "best_val": 0.5, "best_monitor": "val_acc",
}  # fmt: skip
FACT_KEYS = [*FACTS, "summary", "tested_checkpoint", "steps", "test_seconds", "hardware.torch",
             "test_metrics.test_acc_top5", "model_kwargs", "data", "precision"]  # fmt: skip


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()
RUN_FILES = [*RUN_TEXT, "run.json", "curves.png", "confusion_matrix.png"]
# What a file of the run folder may be replaced by: a link out, to the folder, to nothing...
LINKS = ["@secret", "@outside", "@folder", "@parent", "@dangling", "@loop", "@self", "@sibling",
         "/dev/zero", "/proc/self/environ"]  # fmt: skip


@st.composite
def run_folders(draw) -> dict[str, bytes | str | None]:
    """{file name: its bytes, a link target from LINKS, or None for deleted}."""
    files: dict[str, bytes | str | None] = {
        "run.json": draw(
            st.one_of(st.just(json_text(FACTS)), edited_json(FACTS, FACT_KEYS, CARD_VALUES))
        )
    }
    for name in draw(st.lists(st.sampled_from(list(RUN_TEXT)), max_size=3, unique=True)):
        files[name] = draw(st.one_of(mutated_bytes([RUN_TEXT[name]]), st.none()))
    for name in draw(st.lists(st.sampled_from(RUN_FILES), max_size=2, unique=True)):
        files[name] = draw(st.sampled_from(LINKS))
    return files


def make_run(root: Path, files: dict[str, bytes | str | None]) -> Path:
    run = root / "run"
    run.mkdir()
    (root / "outside" / "folder").mkdir()
    contents = {**RUN_TEXT, "run.json": json_text(FACTS), "curves.png": PNG,
                "confusion_matrix.png": PNG} | files  # fmt: skip
    targets = {"@secret": root / "outside" / "passwd", "@outside": root / "outside" / "folder",
               "@folder": Path("."), "@parent": Path(".."), "@dangling": root / "gone.csv",
               "@sibling": Path("config.yaml")}  # fmt: skip
    for name, value in contents.items():
        path = run / name
        if value is None:
            continue
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif value == "@loop":
            path.symlink_to(f"{name}.loop")
            (run / f"{name}.loop").symlink_to(name)
        elif value == "@self":
            path.symlink_to(name)
        else:
            path.symlink_to(targets.get(value, Path(value)))
    return run


def check_run(files: dict[str, bytes | str | None]) -> None:
    from moderncnn.training.run_facts import read_run_facts
    from moderncnn.training.run_report import render_report
    from moderncnn.viz import plot_confusion_matrix, plot_curves, read_confusion_matrix
    from moderncnn.viz.curves import read_learning_rates, read_metrics

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_world(root)
        run = make_run(root, files)
        out = root / "out"
        out.mkdir()
        before = snapshot(root, out)
        for name, call in [
            ("render_report", lambda: render_report(run)),
            ("read_run_facts", lambda: read_run_facts(run)),
            ("read_metrics", lambda: read_metrics(run)),
            ("read_learning_rates", lambda: read_learning_rates(run)),
            ("read_confusion_matrix", lambda: read_confusion_matrix(run)),
            ("plot_curves", lambda: plot_curves(run)),
            ("plot_confusion_matrix", lambda: plot_confusion_matrix(run)),
        ]:
            result = attempt(call, name)
            assert "SECRET-LINE" not in str(result)
        code, _ = run_cli(["report", str(run), "--out", str(out / "report.html")])
        page = out / "report.html"
        assert page.is_file() == (code == 0)
        assert code == 1 or "SECRET-LINE" not in page.read_text()
        run_cli(["plot", str(run), "--out", str(out / "curves.png")])
        assert snapshot(root, out) == before
        assert {p.name for p in out.iterdir()} <= {"report.html", "curves.png"}


@seed(FUZZ_SEED)
@budget(15)
@given(files=run_folders())
def test_crafted_run_folders_report_or_are_refused_in_one_line(files: dict) -> None:
    check_run(files)


@pytest.mark.fuzz
@pytest.mark.sweep
@seed(FUZZ_SEED)
@budget(600)
@given(files=run_folders())
def test_crafted_run_folders_report_or_are_refused_in_one_line_big_budget(files: dict) -> None:
    check_run(files)


def test_the_unedited_run_folder_reports_and_plots(tmp_path: Path) -> None:
    write_world(tmp_path)
    run = make_run(tmp_path, {})
    assert run_cli(["report", str(run), "--out", str(tmp_path / "r.html")])[0] == 0
    assert run_cli(["plot", str(run), "--out", str(tmp_path / "c.png")])[0] == 0
    assert math.isclose(max(v["val_acc"] for v in read_metrics_of(run).values() if v), 0.5)


def read_metrics_of(run: Path) -> dict:
    from moderncnn.viz.curves import read_metrics

    return {epoch: values for epoch, values in read_metrics(run).items() if "val_acc" in values}
