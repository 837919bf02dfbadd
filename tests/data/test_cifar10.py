"""CIFAR-10 loader on batches built from 20 real test images in the real on-disk format."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moderncnn.data import CIFAR10DataModule
from moderncnn.data.cifar10 import CLASS_NAMES, UnsafePickleError, extract_safely, read_batch


def _real_images(samples_dir: Path) -> tuple[np.ndarray, list[int]]:
    files = sorted(samples_dir.glob("cifar10_*_*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # N x 32 x 32 x 3
    labels = [int(f.stem.split("_")[2]) for f in files]
    return images.transpose(0, 3, 1, 2).copy(), labels  # N x 3 x 32 x 32


def _dump(path: Path, obj: dict) -> None:
    # Protocol 4 references the same numpy globals as the real (Python 2, protocol 2) files;
    # Python 3's protocol 2 would add _codecs.encode for bytes, protocol 5 numpy's _frombuffer.
    path.write_bytes(pickle.dumps(obj, protocol=4))


def _write_cifar_folder(folder: Path, images: np.ndarray, labels: list[int]) -> None:
    """data_batch_1..5 with 2 images each, test_batch with the other 10, and batches.meta."""
    folder.mkdir(parents=True)
    rows = images.reshape(len(images), 3072)  # R plane, G plane, B plane, each row-major
    chunks = [(f"data_batch_{i + 1}", slice(2 * i, 2 * i + 2)) for i in range(5)]
    for name, part in [*chunks, ("test_batch", slice(10, 20))]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels[part],
            b"data": rows[part],
            b"filenames": [f"img_{i}.png".encode() for i in range(len(rows[part]))],
        }
        _dump(folder / name, batch)
    meta = {b"num_cases_per_batch": 2, b"label_names": [n.encode() for n in CLASS_NAMES]}
    _dump(folder / "batches.meta", {**meta, b"num_vis": 3072})


@pytest.fixture
def cifar_data(tmp_path: Path, cifar_samples_dir: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    images, labels = _real_images(cifar_samples_dir)
    _write_cifar_folder(tmp_path / "data" / "cifar-10-batches-py", images, labels)
    return tmp_path / "data", torch.from_numpy(images), torch.tensor(labels)


def test_batches_folder_round_trips_pixels_exactly(cifar_data) -> None:
    data_dir, images, labels = cifar_data
    dm = CIFAR10DataModule(data_dir=str(data_dir), val_size=2, batch_size=4, seed=0)
    assert (dm.num_classes, dm.in_chans, dm.class_names[3]) == (10, 3, "cat")
    dm.setup("fit")
    dm.setup("test")

    train_idx, val_idx = dm._split_indices(10)
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    assert torch.equal(dm.train_set.images, images[train_idx])
    assert torch.equal(dm.val_set.labels, labels[val_idx])
    assert torch.equal(dm.test_set.images, images[10:])
    assert torch.equal(dm.test_set.labels, labels[10:])
    assert dm.test_set.labels[:3].tolist() == [0, 9, 5]  # cifar10_10_0, _11_9, _12_5

    batch_images, batch_labels = next(iter(dm.train_dataloader()))
    assert batch_images.shape == (4, 3, 32, 32) and batch_images.dtype == torch.uint8
    assert batch_labels.dtype == torch.int64


def test_archive_is_extracted_and_read(cifar_data, tmp_path: Path) -> None:
    data_dir, images, labels = cifar_data
    archive_dir = tmp_path / "archive_only"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(data_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    dm = CIFAR10DataModule(data_dir=str(archive_dir), val_size=0.2)
    dm.prepare_data()
    assert (archive_dir / "cifar-10-batches-py" / "test_batch").is_file()
    dm.setup()
    assert torch.equal(dm.test_set.images, images[10:])
    assert torch.equal(torch.cat([dm.train_set.labels, dm.val_set.labels]).sort().values,
                       labels[:10].sort().values)  # fmt: skip


def test_the_batches_folder_itself_is_accepted(cifar_data) -> None:
    data_dir, images, _ = cifar_data
    dm = CIFAR10DataModule(data_dir=str(data_dir / "cifar-10-batches-py"), val_size=1)
    dm.setup("test")
    assert torch.equal(dm.test_set.images, images[10:])


def _py2_str(value: bytes) -> bytes:
    return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING: a Python 2 str


def test_python2_pickles_like_the_real_files_load(tmp_path: Path) -> None:
    # The real batches were written by Python 2 (protocol 2, str keys, array bytes as a str).
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    dims = b"".join(b"J" + struct.pack("<i", d) for d in data.shape)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b")
        + b"\x87R(K\x01(" + dims + b"tcnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89" + _py2_str(data.tobytes()) + b"tb"
    )  # fmt: skip
    stream = b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + b"](K\x03K\x09eu."
    (path := tmp_path / "data_batch_1").write_bytes(stream)

    images, labels = read_batch(path)

    assert torch.equal(images.reshape(2, -1), torch.from_numpy(data)) and labels.tolist() == [3, 9]


class _RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _dump(folder / "test_batch", {b"data": _RunsShellCommand(marker), b"labels": []})

    with pytest.raises(UnsafePickleError, match=r"test_batch: refusing to load global .*system"):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("test")
    assert not marker.exists()
    assert b"system" in (folder / "test_batch").read_bytes()  # the payload really is there


ABSOLUTE = "/tmp/moderncnn-test-absolute.txt"


@pytest.mark.parametrize("bad_name", ["../escaped.txt", ABSOLUTE, "a/../../up.txt"])
def test_archive_members_escaping_the_folder_are_refused(tmp_path: Path, bad_name: str) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(bad_name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"refusing to extract .*absolute path or '\.\.'"):
        extract_safely(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not Path(ABSOLUTE).exists()


def test_archive_links_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="links and special files"):
        extract_safely(archive, tmp_path)


def test_missing_data_and_failed_download_say_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)CIFAR-10 not found.*download=True"):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="downloading CIFAR-10 into .* failed"):
        dm.prepare_data()


def test_wrong_label_names_and_shapes_are_reported(cifar_data) -> None:
    data_dir, *_ = cifar_data
    folder = data_dir / "cifar-10-batches-py"
    _dump(folder / "data_batch_2", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_2: expected 'data' N x 3072"):
        CIFAR10DataModule(data_dir=str(data_dir), val_size=1).setup("fit")
    _dump(folder / "batches.meta", {b"label_names": [b"cat", b"dog"]})
    with pytest.raises(ValueError, match=r"batches.meta: label_names .* not CIFAR-10's"):
        CIFAR10DataModule(data_dir=str(data_dir)).setup("test")


def test_default_augmentation_is_pad4_crop_and_flip() -> None:
    dm = CIFAR10DataModule()
    crop, flip = dm.augment.steps
    assert crop.size == (32, 32) and crop.padding == (4, 4, 4, 4) and flip.p == 0.5
