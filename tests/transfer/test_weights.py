"""Pretrained weights: torchvision files load into our models; bad files are refused clearly."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from moderncnn.io import download
from moderncnn.io.checkpoint import CheckpointError, read_state_dict
from moderncnn.io.download import WeightsDownloadError, WeightsHashError
from moderncnn.models import create_model, get_variant_config
from moderncnn.models.pretrained import TORCHVISION_WEIGHTS, load_pretrained

X64 = (2, 3, 64, 64)


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A checkpoint written by torchvision's own resnet18 (random weights, real format)."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18_tv.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_torchvision_checkpoint_gives_equal_outputs(tv_resnet18_file) -> None:
    path, tv_model = tv_resnet18_file
    ours = create_model("resnet18", weights=str(path)).eval()
    x = torch.randn(X64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv_model(x), rtol=0, atol=1e-5)


def test_other_class_count_keeps_fresh_head_and_warns(tv_resnet18_file) -> None:
    path, tv_model = tv_resnet18_file
    with pytest.warns(UserWarning, match=r"fc\.weight, fc\.bias"):
        ours = create_model("resnet18", num_classes=7, weights=str(path))
    assert ours.fc.weight.shape == (7, 512)
    assert torch.equal(ours.layer4[1].conv2.weight, tv_model.layer4[1].conv2.weight)
    assert not torch.equal(ours.fc.weight[:7], tv_model.fc.weight[:7])


def test_wrong_architecture_lists_the_keys(tv_resnet18_file) -> None:
    path, _ = tv_resnet18_file
    with pytest.raises(ValueError, match=r"does not fit resnet34: \d+ missing: layer1\.2\."):
        create_model("resnet34", weights=str(path))


class Tiny(nn.Module):
    """Keys like a torchvision classifier's (conv1, bn1, fc), in a few hundred parameters."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn1(self.conv1(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
        # A Lightning checkpoint: the network under the module's `model.` attribute.
        lambda sd: {
            "state_dict": {f"model.{k}": v for k, v in sd.items()} | {"criterion.w": torch.ones(1)},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"model_name": "tiny"},
        },
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # nn.DataParallel
    ],
    ids=["plain", "state_dict", "model", "model_state_dict", "lightning", "dataparallel"],
)
def test_checkpoint_wrappers(tmp_path: Path, wrap) -> None:
    source = Tiny()
    torch.save(wrap(source.state_dict()), tmp_path / "tiny.ckpt")
    target = Tiny()
    load_pretrained(target, tmp_path / "tiny.ckpt")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_safetensors_file(tmp_path: Path) -> None:
    source = Tiny()
    save_file(source.state_dict(), str(tmp_path / "tiny.safetensors"))
    target = Tiny()
    load_pretrained(target, tmp_path / "tiny.safetensors")
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_rgb_stem_adapted_to_grey_input(tmp_path: Path) -> None:
    source = Tiny()
    torch.save(source.state_dict(), tmp_path / "rgb.pth")
    grey = Tiny(in_chans=1)
    report = load_pretrained(grey, tmp_path / "rgb.pth")
    assert report.adapted == ["conv1.weight"]
    # A grey image through the summed filters == the same image as R = G = B through RGB ones.
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(grey.conv1(x), source.conv1(x.expand(-1, 3, -1, -1)))


class Evil:
    """Unpickling this runs a shell command (the attack weights_only=True prevents)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Tiny().state_dict(), "extra": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*pickled Python objects.*system"):
        load_pretrained(Tiny(), path)
    assert not marker.exists()


def test_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    torch.save(Tiny(), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match=r"module\.pth.*state_dict\(\)"):
        read_state_dict(tmp_path / "module.pth")


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    torch.save(Tiny().state_dict(), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.pth").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    for name in ("truncated.pth", "corrupt.pth", "corrupt.safetensors"):
        with pytest.raises(CheckpointError, match=re.escape(name) + r".*(truncated|corrupt)"):
            read_state_dict(tmp_path / name)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "no_tensors.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_state_dict(tmp_path / "missing.pth")


def test_old_densenet_keys_are_renamed(tmp_path: Path) -> None:
    tv_model = torchvision.models.densenet121().eval()
    # torchvision's published DenseNet files are from before PyTorch 0.4: `norm1` is `norm.1`,
    # and batch norms have no num_batches_tracked.
    old = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.")
    state = {
        old.sub(r"\1.\2.", k): v
        for k, v in tv_model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save(state, tmp_path / "densenet121_old.pth")
    ours = create_model("densenet121", weights=str(tmp_path / "densenet121_old.pth")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv_model(x), rtol=0, atol=1e-5)


def test_table_matches_installed_torchvision() -> None:
    expected = {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
        "densenet121", "densenet161", "densenet169", "densenet201", "googlenet", "inception_v3",
    }  # fmt: skip
    assert set(TORCHVISION_WEIGHTS) == expected
    for arch, table in TORCHVISION_WEIGHTS.items():
        enum = torchvision.models.get_model_weights(arch)
        assert {tag: w.url for tag, w in table.items()} == {w.name: w.url for w in enum}, arch
        assert next(iter(table)) == enum.DEFAULT.name, arch
        assert get_variant_config(arch).weights == table  # the table is the variant's
        for w in enum:  # the evaluation transform, as torchvision's weights state it
            transform = w.transforms()
            assert [table[w.name].crop_size] == list(transform.crop_size), (arch, w.name)
            assert [table[w.name].resize_size] == list(transform.resize_size), (arch, w.name)
            assert table[w.name].hash_prefix == w.url.rsplit("-", 1)[1].split(".")[0]


def test_timm_weights_are_in_the_variant_tables() -> None:
    v4 = get_variant_config("inception_v4").weights
    assert v4["TF_IN1K"].url == (
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
        "inceptionv4-8e4777a0.pth"
    )
    irv2 = get_variant_config("inception_resnet_v2").weights
    assert [w.file_name for w in irv2.values()] == [
        "inception_resnet_v2-940b1cd6.pth",
        "ens_adv_inception_resnet_v2-2592a550.pth",
    ]
    for entry in [*v4.values(), *irv2.values()]:
        assert entry.source == "timm" and entry.hub_id.startswith("timm/inception_")
        assert entry.mean == entry.std == (0.5, 0.5, 0.5) and entry.transform_input
        assert entry.crop_size == 299 and entry.label_offset == 1
    timm = pytest.importorskip("timm")
    for name, table in (("inception_v4", v4), ("inception_resnet_v2", irv2)):
        for entry in table.values():
            tag = entry.hub_id.removeprefix(f"timm/{name}.")
            cfg = timm.models.get_pretrained_cfg(f"{name}.{tag}")
            assert cfg.hf_hub_id.rstrip("/") in ("timm", entry.hub_id)
            assert tuple(cfg.mean) == entry.mean and tuple(cfg.std) == entry.std
            assert cfg.input_size == (3, entry.crop_size, entry.crop_size)
            assert int(entry.crop_size / cfg.crop_pct) == entry.resize_size
            assert cfg.interpolation == entry.interpolation


def test_offline_error_names_url_and_path(torch_home: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise download.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download, "urlopen", offline)
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsDownloadError) as err:
        load_pretrained(Tiny(), "imagenet", model_name="resnet18")
    assert url in str(err.value) and str(path) in str(err.value)
    assert not path.exists() and not list(path.parent.glob("*"))  # no partial file left


def test_plain_http_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        load_pretrained(Tiny(), "http://example.com/tiny-0123abcd.pth")


def _hashed_file(folder: Path, stem: str) -> tuple[Path, str]:
    buffer = io.BytesIO()
    torch.save(Tiny().state_dict(), buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{digest[:8]}.pth"
    path.write_bytes(buffer.getvalue())
    return path, digest


def test_cached_file_hash_is_checked(torch_home: Path, monkeypatch) -> None:
    monkeypatch.setattr(download, "urlopen", pytest.fail)  # cached: no download may happen
    cache = torch_home / "hub" / "checkpoints"
    good, _ = _hashed_file(cache, "tiny")
    report = load_pretrained(Tiny(), f"https://example.com/models/{good.name}")
    assert report.path == good
    bad = cache / "tiny-deadbeef.pth"
    bad.write_bytes(good.read_bytes())
    with pytest.raises(WeightsHashError, match=r"tiny-deadbeef\.pth.*'deadbeef'"):
        load_pretrained(Tiny(), "https://example.com/models/tiny-deadbeef.pth")


class FakeResponse(io.BytesIO):
    headers: dict[str, str] = {}

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        self.close()


def test_download_checks_hash_before_caching(torch_home: Path, tmp_path: Path, monkeypatch) -> None:
    source, digest = _hashed_file(tmp_path / "server", "tiny")
    monkeypatch.setattr(download, "urlopen", lambda req: FakeResponse(source.read_bytes()))
    cache = torch_home / "hub" / "checkpoints"
    path = download.cached_download(f"https://example.com/{source.name}", progress=False)
    assert path == cache / source.name and path.read_bytes() == source.read_bytes()
    with pytest.raises(WeightsHashError, match="download was corrupted"):
        download.cached_download("https://example.com/tiny-0badc0de.pth", progress=False)
    assert not (cache / "tiny-0badc0de.pth").exists()
    assert sorted(p.name for p in cache.iterdir()) == [source.name]  # no partial file either


@pytest.fixture
def unchecked_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a stand-in file take the name of a published torchvision file."""
    monkeypatch.setattr(download, "check_hash", lambda path: None)
    monkeypatch.setattr("moderncnn.models.pretrained.check_hash", lambda path: None)


def test_googlenet_imagenet_weights_turn_transform_input_on(torch_home, unchecked_hashes) -> None:
    tv_model = torchvision.models.GoogLeNet(
        aux_logits=True, transform_input=True, init_weights=False
    ).eval()
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(tv_model.state_dict(), cache / "googlenet-1378be20.pth")
    ours = create_model("googlenet", weights="imagenet").eval()
    assert ours.transform_input
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv_model(x), rtol=0, atol=1e-5)
    # An explicit choice wins; and a model built without aux heads ignores the file's.
    plain = create_model("googlenet", weights="imagenet", transform_input=False, aux_logits=False)
    assert not plain.transform_input and plain.aux1 is None
    assert torch.equal(plain.fc.weight, tv_model.fc.weight)


def test_googlenet_file_without_aux_heads_keeps_fresh_ones(tmp_path: Path) -> None:
    tv_model = torchvision.models.GoogLeNet(aux_logits=False, init_weights=False)
    torch.save(tv_model.state_dict(), tmp_path / "googlenet_no_aux.pth")
    ours = create_model("googlenet")
    fresh = ours.aux1.fc2.weight.clone()
    report = load_pretrained(ours, tmp_path / "googlenet_no_aux.pth", model_name="googlenet")
    assert "aux1.fc2.weight" in report.fresh_aux and not report.fresh_head
    assert torch.equal(ours.aux1.fc2.weight, fresh)
    loaded = ours.inception5b.branch1.conv.weight
    assert torch.equal(loaded, tv_model.inception5b.branch1.conv.weight)
    assert not ours.transform_input  # not torchvision's published file: left as built


def test_backbone_saved_without_classifier_keeps_a_fresh_head(tmp_path: Path) -> None:
    source = create_model("resnet18_cifar", num_classes=5, channels=(8, 16), layers=(1, 1))
    source.reset_classifier(0)  # a backbone only: no fc.* keys in the file
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    target = create_model("resnet18_cifar", num_classes=5, channels=(8, 16), layers=(1, 1))
    head = target.fc.weight.clone()
    load_pretrained(target, tmp_path / "backbone.pth")
    assert torch.equal(target.fc.weight, head)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    del_one = {k: v for k, v in source.state_dict().items() if k != "layer1.0.conv1.weight"}
    torch.save(del_one, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 missing: layer1\.0\.conv1\.weight"):
        load_pretrained(target, tmp_path / "partial.pth")


def test_headless_model_loads_a_file_with_classifier_silently(tv_resnet18_file, caplog) -> None:
    path, tv_model = tv_resnet18_file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "classifier does not fit" warning
        ours = create_model("resnet18", num_classes=0, weights=str(path)).eval()
    assert isinstance(ours.fc, nn.Identity)
    x = torch.randn(X64)
    backbone = copy.deepcopy(tv_model)
    backbone.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), backbone(x), rtol=0, atol=1e-5)


def test_headless_googlenet_loads_classifier_and_aux_heads_silently(tmp_path: Path) -> None:
    source = create_model("googlenet_cifar", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "googlenet_10.pth")
    for kwargs in ({"num_classes": 0}, {"num_classes": 0, "aux_logits": False}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            target = create_model("googlenet_cifar", **kwargs)
            report = load_pretrained(target, tmp_path / "googlenet_10.pth")
        assert not report.fresh_head and not report.fresh_aux
        assert report.unneeded and all(k.startswith(("fc.", "aux")) for k in report.unneeded)
        loaded, saved = target.inception5b.branch1.conv.weight, source.inception5b.branch1.conv
        assert torch.equal(loaded, saved.weight)


def test_other_class_count_refits_every_head(tmp_path: Path) -> None:
    source = create_model("googlenet_cifar", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "googlenet_10.pth")
    target = create_model("googlenet_cifar", num_classes=3)
    with pytest.warns(UserWarning, match=r"fc\.weight, fc\.bias, aux1\.fc2\.weight"):
        report = load_pretrained(target, tmp_path / "googlenet_10.pth")
    assert target.aux1.fc2.weight.shape == (3, 1024)
    assert torch.equal(target.aux1.fc1.weight, source.aux1.fc1.weight)  # the rest of it loads
    assert len(report.fresh_head) == 6


def test_timm_inception_v4_file_drops_the_background_class(torch_home, unchecked_hashes) -> None:
    """timm's GitHub file has TensorFlow's 1001 classes, "background" first: dropped on load,
    and transform_input turned on, as the weights take (x - 0.5) / 0.5."""
    source = create_model("inception_v4", num_classes=1001, width_multiplier=0.125).eval()
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / "inceptionv4-8e4777a0.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = create_model("inception_v4", width_multiplier=0.125, weights="imagenet").eval()
    assert ours.transform_input and ours.last_linear.out_features == 1000
    assert torch.equal(ours.last_linear.weight, source.last_linear.weight[1:])
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        source.transform_input = True
        torch.testing.assert_close(ours(x), source(x)[:, 1:], rtol=0, atol=1e-5)
    with pytest.warns(UserWarning, match="does not fit"):  # another class count: a fresh head
        create_model("inception_v4", num_classes=5, width_multiplier=0.125, weights="imagenet")


def test_named_weights_of_the_new_families_resolve(torch_home, monkeypatch) -> None:
    from moderncnn.models import pretrained

    asked = []
    monkeypatch.setattr(pretrained, "cached_download", lambda url, progress: asked.append(url))
    for name, weights in [
        ("resnext50_32x4d", "imagenet"),
        ("wide_resnet101_2", "IMAGENET1K_V1"),
        ("inception_resnet_v2", "tf_ens_adv_in1k"),
    ]:
        pretrained.resolve_weights(weights, name)
    assert asked == [
        "https://download.pytorch.org/models/resnext50_32x4d-1a0047aa.pth",
        "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
        "ens_adv_inception_resnet_v2-2592a550.pth",
    ]
    with pytest.raises(ValueError, match="preact_resnet18.*named weights exist for"):
        pretrained.resolve_weights("imagenet", "preact_resnet18")


def test_grey_weights_into_a_colour_model_name_the_channels(tmp_path: Path) -> None:
    """A model trained on grey images, fine-tuned on a folder of photos: the message says 1 vs
    3 channels, not "resnet18, not resnet18_cifar, whose stem differs"."""
    torch.save(Tiny(in_chans=1).state_dict(), tmp_path / "grey.pth")
    with pytest.raises(ValueError) as caught:
        load_pretrained(Tiny(), tmp_path / "grey.pth")
    message = str(caught.value)
    assert "takes 1-channel images (grey), the model 3 (in_chans=3)" in message
    assert "in_chans=1" in message and "stem differs" not in message
