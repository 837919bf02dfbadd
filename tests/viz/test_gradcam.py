"""Grad-CAM (``moderncnn explain``): every architecture, probe models, checkpoints of any
class count, and a map that lights up the region that decides the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import moderncnn
from moderncnn.cli import main as cli
from moderncnn.inference.probe import ProbeClassifier, ProbeHead
from moderncnn.io.card import Preprocess
from moderncnn.io.errors import ConfigError
from moderncnn.training.module import ImageClassifier
from moderncnn.viz import explain, grad_cam
from moderncnn.viz.gradcam import target_layer

TINY = {"channels": [8, 16], "layers": [1, 1]}
GREY28 = Preprocess(28, None, (0.5,), (0.25,))


def _input_size(model: torch.nn.Module, name: str) -> tuple[int, int, int]:
    if name.endswith("_cifar"):
        return tuple(model.input_size)
    smallest = getattr(model, "min_input_size", None) or (3, 32, 32)
    return (3, max(smallest[1], 64), max(smallest[2], 64))  # the big ones at a cheap size


# Deeper and wider variants run the same code as their family's smallest member: swept
# (`pytest -m sweep`), as in tests/models/test_interface.py.
DEEP = (
    "resnet101", "resnet152", "resnext101", "wide_resnet", "preact_resnet34", "preact_resnet50",
    "densenet161", "densenet169", "densenet201", "inception_v4_cifar", "inception_resnet_v2_cifar",
    "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "plain32", "plain44",
    "plain56", "plain110", "preact_resnet110", "preact_resnet164", "densenet_bc_100",
)  # fmt: skip
MODELS = [
    pytest.param(n, marks=pytest.mark.sweep) if n.startswith(DEEP) else n
    for n in moderncnn.list_models()
]


@pytest.mark.parametrize("name", MODELS)
def test_every_architecture_gives_a_map_of_its_last_stage(name: str) -> None:
    model = moderncnn.create_model(name, num_classes=7)
    model.train()  # explained in eval mode (aux heads off), then put back in training mode
    size = _input_size(model, name)
    maps, logits = grad_cam(model, torch.randn(1, *size))
    assert maps.shape == (1, *size[1:]) and logits.shape == (1, 7)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert target_layer(model)[0] == model.feature_info[-1].module
    assert model.training and all(m.training for m in model.modules())


def _square_data(
    n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise; class 1 images hold a bright 8 x 8 square somewhere: the one region that
    decides the class. Images, labels and each square's top-left corner."""
    images = torch.rand(n, 1, 32, 32, generator=generator) * 0.4
    labels = torch.randint(0, 2, (n,), generator=generator)
    corners = torch.randint(0, 25, (n, 2), generator=generator)
    for image, label, (r, c) in zip(images, labels.tolist(), corners.tolist(), strict=True):
        if label == 1:
            image[:, r : r + 8, c : c + 8] = 1.0
    return images, labels, corners


def test_the_map_lights_up_the_region_that_decides_the_class() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = moderncnn.create_model("resnet18_cifar", num_classes=2, in_chans=1, **TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(80):
        images, labels, _ = _square_data(32, generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels, corners = _square_data(64, generator)
    images, corners = images[labels == 1], corners[labels == 1]
    maps, logits = grad_cam(model, images, torch.ones(len(images), dtype=torch.long))
    assert (logits.argmax(1) == 1).float().mean() > 0.9  # it learned the rule
    for heat, (r, c) in zip(maps, corners.tolist(), strict=True):
        inside = heat[r : r + 8, c : c + 8].mean()
        outside = (heat.sum() - heat[r : r + 8, c : c + 8].sum()) / (32 * 32 - 64)
        assert inside > 3 * outside, ((r, c), float(inside), float(outside))


def test_a_probe_model_uses_its_backbones_map_and_its_own_classes() -> None:
    backbone = moderncnn.create_model("resnet18_cifar", num_classes=0, **TINY)
    probe = ProbeClassifier(backbone, ProbeHead(backbone.num_features, 3))
    name, _ = target_layer(probe)
    assert name == "backbone." + backbone.feature_info[-1].module
    results = explain(probe, torch.randn(2, 3, 32, 32), topk=2)
    assert [len(r.classes) for r in results] == [2, 2]
    assert all(r.heatmap.shape == (32, 32) and r.stage == name for r in results)


def _checkpoint(path: Path, num_classes: int) -> Path:
    names = [f"class {i}" for i in range(num_classes)]
    module = ImageClassifier(
        "resnet18_cifar", num_classes=num_classes, in_chans=1, model_kwargs=TINY,
        class_names=names, preprocess=GREY28.to_dict(),
    )  # fmt: skip
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    torch.save(saved, path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        files.append(tmp_path / f"shoe{i}.png")
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(files[-1])
    return files


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_explain_command_writes_one_picture_per_image(
    num_classes: int, images: list[Path], tmp_path: Path, capsys
) -> None:
    ckpt = _checkpoint(tmp_path / f"c{num_classes}.ckpt", num_classes)
    out = tmp_path / "out"
    args = ["explain", "--model", str(ckpt), *map(str, images), "--out", str(out)]
    for _ in range(2):  # a second call overwrites, and works the same
        assert cli(args) == 0
        printed = capsys.readouterr().out
        for image in images:
            picture = Image.open(out / f"{image.stem}.gradcam.png").convert("RGB")
            colours = np.unique(np.asarray(picture).reshape(-1, 3), axis=0)
            assert len(colours) > 50  # an image, an overlay and bars: not blank
            assert f"{image}: class " in printed
    assert sorted(p.name for p in out.iterdir()) == ["shoe0.gradcam.png", "shoe1.gradcam.png"]


def test_explain_a_chosen_class_and_the_errors(images: list[Path], tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "c.ckpt", 10)
    [result] = explain(ckpt, images[:1], target="class 3")
    assert result.target == "class 3"
    assert explain(ckpt, images[:1], target=3)[0].heatmap.shape == (28, 28)
    with pytest.raises(ConfigError, match="stage 5 does not exist; the stages are 0: layer1"):
        explain(ckpt, images[:1], stage=5)
    args = ["explain", "--model", str(ckpt), str(images[0]), "--out", str(tmp_path / "o")]
    assert cli([*args, "--class", "Nope"]) == 1
    err = capsys.readouterr().err
    assert "moderncnn explain: error: class 'Nope' is not one of the model's classes" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    assert cli(["explain", "--model", str(ckpt), str(tmp_path / "missing.png")]) == 1
    assert "none of the images could be read" in capsys.readouterr().err


# -- issue 23, M5: images go through in batches of a bounded size --------------------------------


def test_maps_computed_in_batches_equal_those_of_one_image_at_a_time() -> None:
    torch.manual_seed(0)
    model = moderncnn.create_model("resnet18_cifar", num_classes=3, in_chans=1, **TINY)
    images = torch.randn(5, 1, 32, 32)
    for chosen in (None, torch.tensor([0, 1, 2, 0, 1])):
        maps, logits = grad_cam(model, images, chosen, batch_size=2)
        for i in range(len(images)):
            one = None if chosen is None else chosen[i : i + 1]
            single_map, single_logits = grad_cam(model, images[i : i + 1], one)
            torch.testing.assert_close(maps[i : i + 1], single_map, atol=1e-5, rtol=0)
            torch.testing.assert_close(logits[i : i + 1], single_logits, atol=1e-5, rtol=1e-5)
        assert maps.amax((1, 2)).eq(1).all()  # each map scaled on its own


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images each Grad-CAM pass receives."""
    from moderncnn.viz import gradcam

    seen: list[int] = []
    real = gradcam._grad_cam_batch

    def recording(network, layer, inputs, targets):
        seen.append(len(inputs))
        return real(network, layer, inputs, targets)

    monkeypatch.setattr(gradcam, "_grad_cam_batch", recording)
    return seen


def test_explain_never_runs_grad_cam_on_more_than_a_batch(
    batch_sizes: list[int], tmp_path: Path, capsys
) -> None:
    ckpt = _checkpoint(tmp_path / "c.ckpt", 3)
    results = explain(ckpt, torch.randn(20, 1, 28, 28))
    assert batch_sizes == [8, 8, 4] and len(results) == 20  # bounded by the batch, not the count
    batch_sizes.clear()
    assert len(explain(ckpt, torch.randn(7, 1, 28, 28), batch_size=3)) == 7
    assert batch_sizes == [3, 3, 1]
    batch_sizes.clear()
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["--out", str(tmp_path / "out"), "--batch_size", "2"]
    assert cli(["explain", "--model", str(ckpt), str(folder), *args]) == 0
    assert batch_sizes == [2, 1] and len(list((tmp_path / "out").iterdir())) == 3


def test_a_batch_size_that_is_not_a_positive_int_is_one_line(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "c.ckpt", 3)
    with pytest.raises(ConfigError, match="batch_size must be a positive int, got 0"):
        explain(ckpt, torch.randn(2, 1, 28, 28), batch_size=0)
    args = ["explain", "--model", str(ckpt), str(tmp_path / "x.png"), "--batch_size", "-1"]
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert "batch_size must be a positive int, got -1" in err and len(err.splitlines()) == 1
