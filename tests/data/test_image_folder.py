"""Image folders with odd modes, EXIF rotation and broken files: reported, skipped, never fatal."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from moderncnn.data import ImageFolderDataModule
from moderncnn.data.images import BadImageError, load_image


def _gradient(size: tuple[int, int] = (24, 16)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], -1))


def _write_odd_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    paths = {name: folder / name for name in [
        "gray.png", "palette.png", "palette_alpha.png", "cmyk.jpg", "rgba.png", "depth16.png",
        "exif_rotated.jpg", "bilevel.bmp", "gray_alpha.png",
    ]}  # fmt: skip
    _gradient().convert("L").save(paths["gray.png"])
    _gradient().convert("P").save(paths["palette.png"])
    palette = Image.new("P", (24, 16), 0)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.paste(1, (0, 0, 12, 16))  # left half colour 1 (red), right half colour 0
    palette.save(paths["palette_alpha.png"], transparency=0)  # right half transparent
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(paths["cmyk.jpg"])  # red in CMYK
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[:, :12] = (0, 0, 255, 255)  # opaque blue | fully transparent black
    Image.fromarray(rgba).save(paths["rgba.png"])
    depth16 = np.array([[0, 257, 32896, 65535] * 6] * 16, dtype=np.uint16)
    Image.fromarray(depth16).save(paths["depth16.png"])
    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(paths["exif_rotated.jpg"], exif=exif, quality=95)
    _gradient().convert("1").save(paths["bilevel.bmp"])
    _gradient().convert("LA").save(paths["gray_alpha.png"])
    return paths


def _write_bad_files(folder: Path) -> dict[str, Path]:
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    bad = {"truncated": folder / "truncated.jpg", "empty": folder / "empty.jpg"}
    bad["truncated"].write_bytes(data[: len(data) * 2 // 3])  # a download cut short
    bad["empty"].write_bytes(b"")
    bad["text"] = folder / "notes.jpg"
    bad["text"].write_text("not an image, just a text file with a .jpg name\n")
    return bad


@pytest.fixture
def image_root(tmp_path: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    root = tmp_path / "birds"
    odd = _write_odd_images(root / "001.Black_footed_Albatross")
    bad = _write_bad_files(root / "001.Black_footed_Albatross")
    (root / "002.Laysan_Albatross").mkdir()
    for index in range(6):
        _gradient().rotate(index * 60).save(root / "002.Laysan_Albatross" / f"{index}.png")
    (root / "010_Sooty_Albatross" / "nested").mkdir(parents=True)
    for index in range(3):
        _gradient().save(root / "010_Sooty_Albatross" / "nested" / f"{index}.jpg")
    (root / "README.txt").write_text("a file beside the class folders is ignored")
    (root / ".cache").mkdir()
    return root, odd, bad


def _module(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), image_size=16, resize_size=18, batch_size=4, **kwargs)


def test_classes_come_from_sorted_folders_without_numeric_prefix(image_root) -> None:
    root, *_ = image_root
    dm = _module(root)  # nothing is decoded yet
    assert dm.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert dm.class_to_idx == {"Black_footed_Albatross": 0, "Laysan_Albatross": 1,
                               "Sooty_Albatross": 2}  # fmt: skip
    assert (dm.num_classes, dm.in_chans, dm.resize_size) == (3, 3, 18)
    assert dm.bad_files is None


def test_odd_modes_become_upright_rgb(image_root) -> None:
    _, odd, _ = image_root
    images = {name: load_image(path) for name, path in odd.items()}
    assert all(image.mode == "RGB" for image in images.values())

    rgba = np.asarray(images["rgba.png"])
    assert rgba[0, 0].tolist() == [0, 0, 255] and rgba[0, -1].tolist() == [255, 255, 255]
    palette = np.asarray(images["palette_alpha.png"])
    assert palette[0, 0].tolist() == [200, 30, 30] and palette[0, -1].tolist() == [255] * 3
    depth = np.asarray(images["depth16.png"])[0, :4, 0]
    assert depth.tolist() == [0, 1, 128, 255]  # scaled by 1/257, not clipped at 255
    cmyk = np.asarray(images["cmyk.jpg"]).astype(int)
    assert cmyk[8, 12, 0] > 200 and cmyk[8, 12, 1:].max() < 60

    rotated = images["exif_rotated.jpg"]
    assert rotated.size == (20, 40)  # stored 40 wide x 20 high, displayed upright
    red = np.asarray(rotated).astype(int)
    assert red[2:8, -8:-2, 0].min() > 200 and red[2:8, :6, 0].max() < 60  # top-right now


def test_bad_files_are_reported_by_path_and_skipped(image_root, caplog) -> None:
    root, odd, bad = image_root
    dm = _module(root, val_fraction=0.25)
    with caplog.at_level(logging.WARNING, logger="moderncnn.data.image_folder"):
        dm.setup("fit")

    assert set(dm.bad_files) == set(bad.values())
    assert "empty file (0 bytes)" in dm.bad_files[bad["empty"]]
    assert "not an image" in dm.bad_files[bad["text"]]
    assert "truncated or corrupt" in dm.bad_files[bad["truncated"]]
    assert all(str(path) in caplog.text for path in bad.values())

    samples = dm.train_set.samples + dm.val_set.samples
    assert len(samples) == len(odd) + 6 + 3
    assert not set(bad.values()) & {path for path, _ in samples}
    for index in range(len(dm.train_set)):  # every good image loads, none crashes
        image, label = dm.train_set[index]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert 0 <= label < 3


def test_split_is_stratified_and_seeded(image_root) -> None:
    root, *_ = image_root
    dm, again, other = (_module(root, val_fraction=0.34, seed=s) for s in (1, 1, 2))
    for module in (dm, again, other):
        module.setup("fit")
    val_labels = [label for _, label in dm.val_set.samples]
    assert [val_labels.count(c) for c in range(3)] == [3, 2, 1]  # round(0.34 * 9, 6, 3)
    assert dm.val_set.samples == again.val_set.samples
    assert dm.val_set.samples != other.val_set.samples

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64


def test_class_map_and_bad_file_report_go_to_the_log_dir(image_root, tmp_path: Path) -> None:
    root, _, bad = image_root
    dm = _module(root)
    run_dir = tmp_path / "run"
    # The run folder comes from the logger (trainer.log_dir is a collective call under DDP).
    logger = SimpleNamespace(log_dir=str(run_dir), save_dir=str(tmp_path))
    dm.trainer = SimpleNamespace(loggers=[logger], is_global_zero=True)
    dm.setup("fit")

    assert json.loads((run_dir / "class_to_idx.json").read_text()) == dm.class_to_idx
    report = json.loads((run_dir / "bad_images.json").read_text())
    assert set(report) == {str(path) for path in bad.values()}
    assert dm.state_dict() == {"class_to_idx": dm.class_to_idx}


def test_test_fraction_and_test_root(image_root, tmp_path: Path) -> None:
    root, *_ = image_root
    dm = _module(root, val_fraction=0.2, test_fraction=0.2)
    dm.setup("test")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 18
    assert len(dm.test_set) == 2 + 1 + 1  # round(0.2 * 9), round(0.2 * 6), round(0.2 * 3)

    test_root = tmp_path / "test"
    (test_root / "002.Laysan_Albatross").mkdir(parents=True)
    _gradient().save(test_root / "002.Laysan_Albatross" / "a.png")
    dm = _module(root, test_root=str(test_root))
    dm.setup("test")
    assert [label for _, label in dm.test_set.samples] == [1]

    (test_root / "003.Unknown_Bird").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['003.Unknown_Bird'\] that are not in"):
        _module(root, test_root=str(test_root))


def test_user_augmentations_and_preview(image_root) -> None:
    root, *_ = image_root
    dm = _module(root, augmentations=[{"ColorJitter": {"brightness": 0.5}}, "RandomVerticalFlip"])
    images, labels = dm.preview_batch(n=5)
    assert images.shape == (5, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert labels.shape == (5,)
    with pytest.raises(ValueError, match="unknown augmentation 'ColourJitter'.*ColorJitter"):
        _module(root, augmentations=["ColourJitter"])


def test_pixel_limit_flags_decompression_bombs(image_root) -> None:
    _, odd, _ = image_root
    with pytest.raises(BadImageError, match=r"24x16 = 384 pixels is above max_image_pixels=100"):
        load_image(odd["gray.png"], max_image_pixels=100)
    assert load_image(odd["gray.png"], max_image_pixels=None).size == (24, 16)


def test_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        _module(tmp_path / "missing")
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match=r"root has no class folders"):
        _module(tmp_path / "root")
    (tmp_path / "root" / "cats").mkdir()
    (tmp_path / "root" / "cats" / "notes.txt").write_text("no images here")
    (tmp_path / "root" / "dogs").mkdir()
    _gradient().save(tmp_path / "root" / "dogs" / "0.png")
    with pytest.raises(ValueError, match=r"class folder\(s\) with no image files .*cats\."):
        _module(tmp_path / "root")
    with pytest.raises(ValueError, match="val_fraction must be a fraction in"):
        _module(tmp_path / "root", val_fraction=1.5)
