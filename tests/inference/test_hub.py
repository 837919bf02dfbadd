"""The Hugging Face Hub round trip, offline: push to a stand-in that records the upload, load
from a pre-filled Hub cache, and the model card's plain-PyTorch snippet in a clean process."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

pytest.importorskip("huggingface_hub", reason="the optional `hub` extra")
import huggingface_hub  # noqa: E402

import moderncnn  # noqa: E402
from moderncnn.cli import main as cli_main  # noqa: E402
from moderncnn.inference import load_model, save_model  # noqa: E402
from moderncnn.inference.publish import model_card_markdown  # noqa: E402
from moderncnn.io.card import ModelCard, Preprocess  # noqa: E402
from moderncnn.io.errors import ConfigError, MissingFileError, ModernCNNError  # noqa: E402
from moderncnn.models import create_model  # noqa: E402

REPO_ID = "someone/tiny-resnet"
NAMES = ["boot", "shirt", "bag"]
# Two ResNets the card's snippet rebuilds: a grey small-image one (the quickstart's kind) and
# a bottleneck one with the ImageNet stem.
MODELS = {
    "resnet18_cifar": ({"channels": [8, 16], "layers": [1, 1]}, 1, 28),
    "resnet50": ({"channels": [8, 16], "layers": [1, 2]}, 3, 64),
}


def _saved(tmp: Path, name: str) -> Path:
    kwargs, chans, size = MODELS[name]
    network = create_model(name, num_classes=3, in_chans=chans, **kwargs)
    network.train()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for _ in range(3):
            network(torch.randn(4, chans, size, size) * 2 + 0.5)
    card = ModelCard(
        name, 3, chans, kwargs, tuple(NAMES),
        Preprocess.for_size(size, [0.4] * chans, [0.3] * chans), metrics={"test_acc": 0.875},
    )  # fmt: skip
    return save_model(network.eval(), tmp / f"saved-{name}", card=card)


@pytest.fixture
def pushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """push_to_hub against a stand-in HfApi that copies what would be uploaded."""
    record: dict = {"calls": []}

    def create_repo(self, repo_id, **kwargs):
        record["calls"].append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        record["calls"].append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = load_model(_saved(tmp_path, "resnet18_cifar"), runtime="torch")
    record["url"] = moderncnn.push_to_hub(
        model, f"hf_hub:{REPO_ID}", private=True, metrics={"val_acc": 0.9}
    )
    record["folder"] = tmp_path / "uploaded"
    record["model"] = model
    return record


def fill_hub_cache(cache: Path, repo_id: str, files: Path, commit: str = "a" * 40) -> Path:
    """The Hub cache layout (huggingface_hub's "Manage the cache" guide): content-addressed
    blobs, a snapshot folder of links to them per commit, refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for folder in (repo / "blobs", snapshot, repo / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(files.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache in tmp, offline mode on, and no socket may connect anywhere."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(self, address):
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def test_push_uploads_the_saved_folder_and_a_model_card(pushed: dict) -> None:
    names = sorted(p.name for p in pushed["folder"].iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]
    (call, repo, kwargs), (call2, repo2, _) = pushed["calls"]
    assert (call, repo, kwargs) == ("create_repo", REPO_ID, {"private": True, "exist_ok": True})
    assert (call2, repo2) == ("upload_folder", REPO_ID)
    assert pushed["url"] == f"https://hub.invalid/{REPO_ID}/commit/1"
    readme = (pushed["folder"] / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\nlibrary_name: moderncnn\n")
    for fact in (
        "`resnet18_cifar`",
        "`boot`, `shirt`, `bag`",
        "resize to 28x28",
        "[0.4]",
        "| `test_acc` | 0.875 |",
        "| `val_acc` | 0.9 |",
        f'load_model("hf_hub:{REPO_ID}")',
        "images converted",
    ):
        assert fact in readme, fact  # fmt: skip
    weights = load_file(pushed["folder"] / "model.safetensors")
    assert weights.keys() == pushed["model"].network.state_dict().keys()


def test_load_model_reads_a_prefilled_hub_cache_offline(pushed: dict, hub_cache: Path) -> None:
    fill_hub_cache(hub_cache, REPO_ID, pushed["folder"])
    scanned = huggingface_hub.scan_cache_dir(hub_cache)  # the library reads our layout
    assert [r.repo_id for r in scanned.repos] == [REPO_ID]
    loaded = moderncnn.load_model(f"hf_hub:{REPO_ID}", runtime="torch")
    assert loaded.card.class_names == tuple(NAMES)
    assert str(loaded.path).startswith(str(hub_cache))
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(loaded(x), pushed["model"](x))


def test_predict_command_reads_the_hub_cache(pushed: dict, hub_cache: Path, tmp_path, capsys):
    fill_hub_cache(hub_cache, REPO_ID, pushed["folder"])
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), np.uint8)).save(image)
    assert cli_main(["predict", "--model", f"hf_hub:{REPO_ID}", str(image)]) == 0
    out = capsys.readouterr().out
    assert "x.png" in out and any(name in out for name in NAMES)


def test_offline_and_not_cached_is_one_line_naming_the_repo(hub_cache: Path) -> None:
    with pytest.raises(MissingFileError) as err:
        moderncnn.load_model("hf_hub:someone/not-there")
    message = str(err.value)
    assert isinstance(err.value, ModernCNNError) and "\n" not in message
    assert "hf_hub:someone/not-there" in message and "HF_HUB_OFFLINE" in message
    assert str(hub_cache) in message


def test_cached_repo_without_a_card_is_refused(hub_cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "pytorch_model.bin").write_bytes(b"\0" * 8)
    fill_hub_cache(hub_cache, "someone/other", other)
    with pytest.raises(ModernCNNError, match=r"hf_hub:someone/other has no config.json"):
        moderncnn.load_model("hf_hub:someone/other")


@pytest.mark.parametrize("spec", ["hf_hub:no-slash", "hf_hub:a/b/c", "hf_hub:../x", "hf_hub:"])
def test_a_malformed_repo_id_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="not a Hub repository id"):
        moderncnn.load_model(spec)


# Run as a separate program: moderncnn and timm cannot be imported there at all.
_RUN_SNIPPET = """
import sys
sys.modules["moderncnn"] = None
sys.modules["timm"] = None
from safetensors.torch import load_file, save_file
exec(compile(open(sys.argv[1]).read(), "card_snippet", "exec"))
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    save_file({"logits": model(x)}, sys.argv[3])
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_the_cards_plain_pytorch_snippet_gives_the_same_logits(
    name: str, tmp_path: Path, hub_cache: Path
) -> None:
    folder = _saved(tmp_path, name)
    readme = model_card_markdown(moderncnn.load_model(folder).card, REPO_ID)
    (snippet,) = re.findall(r"Without moderncnn.*?```python\n(.*?)```", readme, re.S)
    (folder / "README.md").write_text(readme, encoding="utf-8")
    fill_hub_cache(hub_cache, REPO_ID, folder)
    _, chans, size = MODELS[name]
    x = torch.randn(4, chans, size, size)
    save_file({"x": x}, tmp_path / "x.safetensors")
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    (tmp_path / "run.py").write_text(_RUN_SNIPPET, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    env.pop("PYTHONPATH", None)  # nothing of this checkout on the path
    done = subprocess.run(
        [sys.executable, "run.py", "snippet.py", "x.safetensors", "logits.safetensors"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    plain = load_file(tmp_path / "logits.safetensors")["logits"]
    ours = moderncnn.load_model(f"hf_hub:{REPO_ID}", runtime="torch")(x)
    assert torch.allclose(plain, ours, atol=1e-5), (plain - ours).abs().max()
