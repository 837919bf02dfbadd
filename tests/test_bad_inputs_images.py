"""Bad inputs for image folders: every broken file is named with what is wrong, good ones load.

One messy two-class folder holds the files real datasets ship with (empty and truncated
downloads, text saved as .jpg, PNG named .jpg, every PIL mode, EXIF rotation, a 1x1 image,
a decompression bomb, a directory named like an image, a symlink loop, a macOS "._" file, a
non-ASCII class). The folder-level mistakes (an empty class, a single class) get their own, as
does a file deleted or changed after the check before training.
"""

from __future__ import annotations

import json
import logging
import unicodedata
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from moderncnn.cli import main as moderncnn_main
from moderncnn.data import ImageFolderDataModule
from moderncnn.data.image_folder import EmptyClassError
from moderncnn.data.images import BadImageError, load_image
from moderncnn.io.errors import DataError
from moderncnn.io.pixels import denormalize
from moderncnn.training.cli import main

SIZE = 16  # model input side (px)
MAX_PIXELS = 10_000  # decompression-bomb limit of these tests: 200x200 is over it
OLIVE, FILE = "Ölbaum", "ç_ñ_图.png"


def _gradient(width: int = 24, height: int = 16) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], -1))


def _exif_rotated(path: Path) -> None:
    """Stored 40 wide x 20 high, left half red, right half blue; EXIF says turn 90° clockwise."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: displayed rotated 90° clockwise, so left becomes top
    stored.save(path, exif=exif, quality=95)


def _write_good(folder: Path) -> dict[str, Path]:
    good = {name: folder / name for name in [
        "plain.png", "png_named.jpg", "gray.png", "palette.png", "cmyk.jpg", "rgba.png",
        "depth16.png", "one_pixel.png", "exif_rotated.jpg", "UPPER.JPG",
    ]}  # fmt: skip
    _gradient().save(good["plain.png"])
    _gradient().save(good["png_named.jpg"], format="PNG")  # content decides, not the suffix
    _gradient().convert("L").save(good["gray.png"])
    _gradient().convert("P").save(good["palette.png"])
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(good["cmyk.jpg"])
    _gradient().convert("RGBA").save(good["rgba.png"])
    Image.fromarray(np.full((16, 24), 40_000, dtype=np.uint16)).save(good["depth16.png"])
    Image.new("RGB", (1, 1), (10, 200, 30)).save(good["one_pixel.png"])
    _exif_rotated(good["exif_rotated.jpg"])
    _gradient().save(good["UPPER.JPG"])
    (folder / "album.jpg").mkdir()  # a directory named like an image: searched, not decoded
    good["in_album.png"] = folder / "album.jpg" / "inner.png"
    _gradient().save(good["in_album.png"])
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # not followed: no loop
    (folder / "._plain.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS, hidden
    return good


def _write_bad(folder: Path) -> dict[str, Path]:
    bad = {name: folder / f"{name}.{ext}" for name, ext in [
        ("empty", "jpg"), ("truncated", "jpg"), ("text", "jpg"), ("bomb", "png"),
    ]}  # fmt: skip
    bad["empty"].write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad["truncated"])
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])  # a download cut short
    bad["text"].write_text("<html>404 Not Found</html>\n")  # what a failed scrape saves
    Image.new("RGB", (200, 200), (1, 2, 3)).save(bad["bomb"])  # 40,000 pixels > MAX_PIXELS
    return bad


@pytest.fixture
def messy(tmp_path: Path) -> SimpleNamespace:
    root = tmp_path / "plants"
    (root / "cats").mkdir(parents=True)
    (root / OLIVE).mkdir()
    good, bad = _write_good(root / "cats"), _write_bad(root / "cats")
    good["non_ascii"] = root / OLIVE / FILE
    _gradient().save(good["non_ascii"])
    _gradient().save(root / OLIVE / "b.png")
    good["olive_b"] = root / OLIVE / "b.png"
    return SimpleNamespace(root=root, good=good, bad=bad)


def _module(root: Path, **kwargs) -> ImageFolderDataModule:
    kwargs = {"max_image_pixels": MAX_PIXELS, **kwargs}
    return ImageFolderDataModule(
        str(root), image_size=SIZE, resize_size=SIZE, batch_size=4, **kwargs
    )


def test_each_bad_file_is_named_with_its_reason_in_one_warning(messy, caplog) -> None:
    dm = _module(messy.root, val_fraction=0.25)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")  # no DecompressionBombWarning, no warning of any kind
        dm.setup("fit")

    reasons = {name: dm.bad_files[path] for name, path in messy.bad.items()}
    assert set(dm.bad_files) == set(messy.bad.values())
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["truncated"].startswith("truncated or corrupt image (image file is truncated")
    assert reasons["text"] == "not an image file PIL can read"
    assert reasons["bomb"] == (
        "200x200 = 40000 pixels is above max_image_pixels=10000 (decompression-bomb guard); "
        "raise max_image_pixels if the image is genuine"
    )
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1, "one summary, not a warning per file"
    total = len(messy.good) + len(messy.bad)
    assert f"skipping 4 unreadable image file(s) of {total}:" in records[0].getMessage()
    for path, reason in dm.bad_files.items():
        assert f"  {path}: {reason}" in records[0].getMessage()


def test_every_good_file_loads_at_the_model_input_size(messy) -> None:
    dm = _module(messy.root, val_fraction=0.25)
    dm.setup("fit")
    samples = dm.train_set.samples + dm.val_set.samples
    # Each file once: the "loop" symlink is not followed, "._plain.png" is hidden, album.jpg
    # is searched as a folder; the bad files are out.
    assert sorted(path for path, _ in samples) == sorted(messy.good.values())
    for dataset in (dm.train_set, dm.val_set):  # random-crop and resize/center-crop pipelines
        for index in range(len(dataset)):
            image, label = dataset[index]
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            assert torch.isfinite(image).all() and label in (0, 1)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, SIZE, SIZE) and labels.tolist() != []


@pytest.mark.parametrize(
    ("name", "size"),
    [("png_named.jpg", (24, 16)), ("gray.png", (24, 16)), ("cmyk.jpg", (24, 16)),
     ("depth16.png", (24, 16)),
     ("one_pixel.png", (1, 1)), ("rgba.png", (24, 16)), ("palette.png", (24, 16))],
)  # fmt: skip
def test_odd_files_decode_to_rgb_of_their_size(messy, name: str, size: tuple[int, int]) -> None:
    image = load_image(messy.good[name], MAX_PIXELS)
    assert (image.mode, image.size) == ("RGB", size)


def test_one_pixel_image_is_resized_to_the_model_input(messy) -> None:
    dm = _module(messy.root)
    image = load_image(messy.good["one_pixel.png"])
    for transform in (dm.train_transform, dm.eval_transform):
        out = denormalize(transform(image)[None], dm.mean, dm.std)[0]
        assert out.shape == (3, SIZE, SIZE)
        colour = torch.tensor([10, 200, 30]) / 255
        torch.testing.assert_close(out, colour[:, None, None].expand_as(out), atol=0.01, rtol=0)


def test_exif_orientation_is_applied_before_the_model_sees_the_image(messy) -> None:
    image = load_image(messy.good["exif_rotated.jpg"])
    assert image.size == (20, 40), "displayed 20 wide x 40 high, not as stored (40 x 20)"
    dm = _module(messy.root)
    out = denormalize(dm.eval_transform(image)[None], dm.mean, dm.std)[0]
    red_minus_blue = out[0] - out[2]  # stored left (red) is now the top
    assert red_minus_blue[: SIZE // 2 - 1].min() > 0.8
    assert red_minus_blue[SIZE // 2 + 1 :].max() < -0.8


def test_pil_hard_limit_reads_as_a_decompression_bomb_not_corruption(messy, monkeypatch) -> None:
    # PIL itself refuses images above 2 x Image.MAX_IMAGE_PIXELS in Image.open, before our check.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    expected = r"bomb\.png: Image size \(40000 pixels\) exceeds limit"
    with pytest.raises(BadImageError, match=expected) as err:
        load_image(messy.bad["bomb"], max_image_pixels=1_000)
    assert "above max_image_pixels=1000, the decompression-bomb guard" in str(err.value)
    assert "corrupt" not in str(err.value)
    assert load_image(messy.bad["bomb"], max_image_pixels=None).size == (200, 200)


def test_missing_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # dangling link
    with pytest.raises(BadImageError, match=r"gone\.jpg: cannot read the file \(No such file"):
        load_image(tmp_path / "gone.jpg")


def test_non_ascii_names_are_kept_as_utf8(messy, tmp_path: Path) -> None:
    dm = _module(messy.root)
    assert dm.class_names == ["cats", OLIVE] and dm.class_to_idx == {"cats": 0, OLIVE: 1}
    assert load_image(messy.good["non_ascii"]).size == (24, 16)
    dm.setup("fit")
    assert messy.good["non_ascii"] in {path for path, _ in dm.train_set.samples}

    dm.write_run_files(tmp_path / "run")
    raw = (tmp_path / "run" / "class_to_idx.json").read_bytes()
    assert OLIVE.encode("utf-8") in raw, "written as UTF-8, not as \\u00d6 escapes"
    assert json.loads(raw.decode("utf-8")) == {"cats": 0, OLIVE: 1}


def test_decomposed_unicode_folder_names_give_the_composed_class_name(tmp_path: Path) -> None:
    # macOS file systems return "Ö" as "O" + U+0308; the class map must match Linux's.
    for folder in (unicodedata.normalize("NFD", f"001.{OLIVE}"), "002.cats"):
        (tmp_path / folder).mkdir()
        _gradient().save(tmp_path / folder / "a.png")
    dm = _module(tmp_path)
    assert dm.class_names == [OLIVE, "cats"]
    assert unicodedata.is_normalized("NFC", dm.class_names[0])


def test_empty_class_folder_is_an_error_naming_every_empty_folder(messy) -> None:
    (messy.root / "dogs").mkdir()
    (messy.root / "dogs" / "readme.txt").write_text("images to come")
    (messy.root / "eels").mkdir()
    # Raised like torchvision's ImageFolder (FileNotFoundError), and a ValueError as before.
    with pytest.raises(FileNotFoundError) as err:
        _module(messy.root)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, EmptyClassError)
    assert f"{messy.root / 'dogs'}, {messy.root / 'eels'}." in message
    assert "no image files (.bmp .gif .jpeg .jpg" in message and "add images to it" in message


def test_class_folder_of_only_unreadable_files_is_an_error_at_setup(messy) -> None:
    (messy.root / "dogs").mkdir()
    (messy.root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    dm = _module(messy.root)
    with pytest.raises(EmptyClassError, match=r"no readable image in class folder .*dogs: all"):
        dm.setup("fit")


def test_a_single_class_is_an_error_naming_the_root(tmp_path: Path) -> None:
    (tmp_path / "data" / "cats").mkdir(parents=True)
    _gradient().save(tmp_path / "data" / "cats" / "a.png")
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=rf"{root} has only one class folder \('cats'\): a clas"):
        _module(root)


# -- resize bombs and symlinks (issue #12) ----------------------------------------------------


@pytest.mark.parametrize("size", [(1, 20_000), (20_000, 1), (3, 1_000)])
def test_resize_bomb_is_refused_before_decoding(tmp_path: Path, size: tuple[int, int]) -> None:
    # 140 bytes of PNG; resizing its shorter side to 256 would make millions of pixels.
    path = tmp_path / "tall.png"
    Image.new("L", size).save(path)
    assert path.stat().st_size < 2_000
    with pytest.raises(BadImageError, match=r"tall\.png: .* aspect ratio of \d+:1, above "):
        load_image(path)
    assert load_image(path, max_aspect_ratio=None).size == size  # genuine: raise the limit


def test_panorama_within_the_aspect_limit_loads(tmp_path: Path) -> None:
    Image.new("RGB", (1200, 100)).save(tmp_path / "panorama.jpg")  # 12:1
    assert load_image(tmp_path / "panorama.jpg").size == (1200, 100)


def test_resize_bomb_in_a_folder_is_skipped_and_reported(messy) -> None:
    Image.new("L", (1, 20_000)).save(messy.root / "cats" / "strip.png")
    dm = _module(messy.root, max_image_pixels=None)
    dm.setup("fit")
    strip = messy.root / "cats" / "strip.png"
    assert "aspect ratio of 20000:1, above max_aspect_ratio=100" in dm.bad_files[strip]
    assert strip not in {path for path, _ in dm.train_set.samples + dm.val_set.samples}


def _two_classes(root: Path) -> Path:
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            _gradient().save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("target", ["usr", "parent", "root_itself"])
def test_class_folder_symlink_out_of_the_root_is_skipped_and_reported(
    tmp_path: Path, target: str, caplog
) -> None:
    root = _two_classes(tmp_path / "data")
    outside = tmp_path / "elsewhere" / "thousands"
    outside.mkdir(parents=True)
    _gradient().save(outside / "not_yours.png")
    link = root / "linked"
    link.symlink_to({"usr": outside, "parent": Path(".."), "root_itself": Path(".")}[target])
    dm = _module(root)
    assert dm.class_names == ["cats", "dogs"]  # the link is no class
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "outside" in dm.bad_files[link] and "follow_symlinks=True" in dm.bad_files[link]
    assert str(link) in caplog.text
    files = {path for path, _ in dm.train_set.samples + dm.val_set.samples}
    assert all(root.resolve() in path.resolve().parents for path in files)


def test_image_symlink_out_of_the_root_is_skipped_unless_followed(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "data")
    secret = tmp_path / "private.png"
    _gradient().save(secret)
    (root / "cats" / "leak.png").symlink_to(secret)
    (root / "cats" / "alias.png").symlink_to(root / "dogs" / "0.png")  # inside: kept
    dm = _module(root, val_fraction=0.0)
    dm.setup("fit")
    files = {path for path, _ in dm.train_set.samples}
    assert root / "cats" / "leak.png" not in files and root / "cats" / "alias.png" in files
    assert "a symlink to" in dm.bad_files[root / "cats" / "leak.png"]

    followed = _module(root, val_fraction=0.0, follow_symlinks=True)
    followed.setup("fit")
    assert root / "cats" / "leak.png" in {path for path, _ in followed.train_set.samples}
    assert not followed.bad_files


def test_features_and_the_data_module_skip_the_same_links_out_of_the_root(tmp_path: Path) -> None:
    from moderncnn.data.files import read_folder
    from moderncnn.transfer.features import extract_features

    root = _two_classes(tmp_path / "data")
    elsewhere = _two_classes(tmp_path / "elsewhere")
    (root / "cats" / "leak.png").symlink_to(elsewhere / "cats" / "0.png")
    (root / "cats" / "alias.png").symlink_to(root / "dogs" / "0.png")  # inside: kept
    (root / "linked").symlink_to(elsewhere / "dogs")  # a class folder out of the root
    dm = _module(root, val_fraction=0.0)
    dm.setup("fit")
    read_by_module = sorted(path.relative_to(root).as_posix() for path, _ in dm.train_set.samples)
    skipped_by_module = sorted(path.relative_to(root).as_posix() for path in dm.skipped_links)

    skipped: dict[str, list[dict[str, str]]] = {}
    names, (split,) = read_folder(root, skipped=skipped)
    assert names == dm.class_names == ["cats", "dogs"]
    assert sorted(split.files) == read_by_module
    assert "cats/alias.png" in read_by_module and "cats/leak.png" not in read_by_module
    assert sorted(row["file"] for row in skipped["all"]) == skipped_by_module
    assert skipped_by_module == ["cats/leak.png", "linked"]
    assert all("outside" in row["error"] for row in skipped["all"])

    cache = extract_features(nn.Conv2d(3, 4, 3), root, tmp_path / "cache", progress=False)
    assert sorted(cache.files("all")) == read_by_module
    assert sorted(row["file"] for row in cache.skipped("all")) == skipped_by_module
    _, (followed,) = read_folder(root, follow_symlinks=True)
    assert "cats/leak.png" in followed.files and "linked/0.png" in followed.files


def test_followed_class_symlink_is_a_class(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "data")
    outside = _two_classes(tmp_path / "other") / "cats"
    (root / "more_cats").symlink_to(outside)
    assert _module(root, follow_symlinks=True).class_names == ["cats", "dogs", "more_cats"]


# -- issue #12: a file deleted or changed after the check before training ---------------------


def _folder_of(root: Path, per_class: int = 6) -> Path:
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            _gradient().save(root / label / f"{i}.png")
    return root


def test_a_file_deleted_or_changed_after_the_check_is_skipped_and_named(
    tmp_path: Path, caplog
) -> None:
    dm = _module(_folder_of(tmp_path / "data"), val_fraction=0.0)
    dm.setup("fit")
    (deleted, _), (changed, _) = dm.train_set.samples[:2]
    deleted.unlink()
    changed.write_text("<html>overwritten by a sync</html>")
    with caplog.at_level(logging.WARNING):
        sizes = [len(labels) for _, labels in dm.train_dataloader()]
    assert sum(sizes) == len(dm.train_set)  # every batch full: the next image took the place
    assert f"{deleted}: " in caplog.text and f"{changed}: " in caplog.text
    assert "deleted or changed since the check before training" in caplog.text
    assert set(dm.train_set.lost) == {deleted, changed}


def test_every_file_gone_after_the_check_is_one_message(tmp_path: Path) -> None:
    dm = _module(_folder_of(tmp_path / "data", per_class=2), val_fraction=0.0)
    dm.setup("fit")
    for path, _ in dm.train_set.samples:
        path.unlink()
    with pytest.raises(DataError, match="none of the 4 image files checked before training"):
        dm.train_set[0]


def test_fit_survives_a_file_deleted_after_the_check(
    tmp_path: Path, monkeypatch, caplog, capsys
) -> None:
    root = _folder_of(tmp_path / "data")
    victim = root / "cats" / "0.png"
    split = ImageFolderDataModule._split

    def split_then_delete(self) -> None:  # after the check, before the first batch
        split(self)
        victim.unlink(missing_ok=True)

    monkeypatch.setattr(ImageFolderDataModule, "_split", split_then_delete)
    config = {
        "model": {"model": "resnet18_cifar", "model_kwargs": {"channels": [8], "layers": [1]}},
        "data": {
            "class_path": "moderncnn.data.ImageFolderDataModule",
            "init_args": {"root": str(root), "image_size": SIZE, "batch_size": 4,
                          "val_fraction": 0.0, "test_fraction": 0.0},
        },
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu",
                    "enable_model_summary": False},
        "test_after_fit": False,
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        status = main(["fit", "-c", "config.yaml"])
    err = capsys.readouterr().err
    assert status == 0, err[-2000:]
    assert "Traceback" not in err
    assert f"{victim}: " in caplog.text + err
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_features_at_224_skips_a_resize_bomb_and_names_it(tmp_path: Path, capsys) -> None:
    # A 1x100000 PNG (under 300 bytes) made `features --image-size 224` ask for 19.7 GB.
    root = _two_classes(tmp_path / "data")
    Image.new("L", (1, 100_000)).save(root / "cats" / "strip.png")
    args = ["features", "--arch", "resnet18_cifar", "--data", str(root),
            "--model_kwargs", '{"channels": [8], "layers": [1]}',
            "--out", str(tmp_path / "cache"), "--image_size", "224"]  # fmt: skip
    assert moderncnn_main(args) == 0
    out = "".join(capsys.readouterr())
    assert "strip.png: 1x100000 has an aspect ratio of 100000:1" in out and "Traceback" not in out
