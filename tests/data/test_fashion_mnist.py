"""Fashion-MNIST: the real IDX files, the parser's errors, splits and the offline message."""

from __future__ import annotations

import gzip
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from moderncnn.data import FashionMNISTDataModule
from moderncnn.data import fashion_mnist as fm
from moderncnn.data.idx import IdxFormatError, read_idx


def test_idx_parser_reads_the_real_files(fashion_mnist_dir: Path) -> None:
    labels = read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the published t10k order
    assert np.bincount(labels).tolist() == [1000] * 10


def _write_idx(path: Path, values: np.ndarray, magic: bytes | None = None) -> None:
    header = magic or bytes([0, 0, 0x08, values.ndim])
    header += struct.pack(f">{values.ndim}I", *values.shape)
    path.write_bytes(gzip.compress(header + values.astype(np.uint8).tobytes()))


def test_idx_parser_round_trips_and_rejects_corrupt_files(tmp_path: Path) -> None:
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(good := tmp_path / "good-idx3-ubyte.gz", values)
    np.testing.assert_array_equal(read_idx(good), values)

    _write_idx(bad_magic := tmp_path / "bad-magic.gz", values, magic=b"\x12\x34\x08\x03")
    with pytest.raises(IdxFormatError, match=r"bad-magic\.gz: not an IDX file \(magic number 1234"):
        read_idx(bad_magic)

    raw = gzip.decompress(good.read_bytes())
    (short := tmp_path / "short-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(IdxFormatError, match=r"short-idx3-ubyte\.gz: IDX header says shape"):
        read_idx(short)

    (cut := tmp_path / "cut.gz").write_bytes(good.read_bytes()[:20])
    with pytest.raises(IdxFormatError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(cut)


@pytest.fixture
def fashion_mnist_dm(fashion_mnist_dir: Path) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(
        data_dir=str(fashion_mnist_dir), train_subset=600, val_size=0.25, batch_size=64, seed=3
    )
    dm.setup("fit")
    return dm


def test_subset_split_shapes_dtypes_and_labels(fashion_mnist_dm: FashionMNISTDataModule) -> None:
    dm = fashion_mnist_dm
    assert (dm.num_classes, dm.in_chans, dm.input_size) == (10, 1, (1, 28, 28))
    assert len(dm.train_set) == 450 and len(dm.val_set) == 150

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
    assert len(list(dm.val_dataloader())) == 3  # 64 + 64 + 22, nothing dropped

    train_idx, val_idx = dm._split_indices(60_000)
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 600  # disjoint
    all_labels = torch.from_numpy(read_idx(fm.DEBIAN_DIR / "train-labels-idx1-ubyte.gz")).long()
    assert torch.equal(dm.train_set.labels, all_labels[train_idx])


def test_split_is_seeded(fashion_mnist_dm: FashionMNISTDataModule) -> None:
    same = FashionMNISTDataModule(train_subset=600, val_size=0.25, seed=3)
    other = FashionMNISTDataModule(train_subset=600, val_size=0.25, seed=4)
    same.setup("fit")
    assert torch.equal(same.val_set.images, fashion_mnist_dm.val_set.images)
    assert torch.equal(same.train_set.labels, fashion_mnist_dm.train_set.labels)
    assert not torch.equal(other._split_indices(60_000)[1], same._split_indices(60_000)[1])


def test_test_split_is_the_official_t10k(fashion_mnist_dir: Path) -> None:
    dm = FashionMNISTDataModule(batch_size=1000)
    dm.setup("test")
    assert dm.train_set is None and len(dm.test_set) == 10_000
    assert dm.test_set.labels[:3].tolist() == [9, 2, 1]
    assert len(dm.test_dataloader()) == 10


def test_preview_batch_is_augmented_images_in_unit_range(
    fashion_mnist_dm: FashionMNISTDataModule,
) -> None:
    images, labels = fashion_mnist_dm.preview_batch(n=12)
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and labels.shape == (12,)
    assert torch.equal(labels, fashion_mnist_dm.preview_batch(n=12)[1])  # same seeded images
    val_images, _ = fashion_mnist_dm.preview_batch(n=12, split="val")
    raw = fashion_mnist_dm.val_set.images.float() / 255  # val: not augmented, exact pixels
    assert all(any(torch.allclose(v, r, atol=1e-6) for r in raw) for v in val_images)


def test_torchvision_layout_is_found(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for file in fashion_mnist_dir.glob("*-ubyte.gz"):
        (raw / file.name).symlink_to(file)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    assert fm.find_fashion_mnist(dm._search_folders()) == raw


def test_missing_data_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(fm, "DEFAULT_DOWNLOAD_DIR", tmp_path / "data")
    dm = FashionMNISTDataModule()
    dm.prepare_data()  # download=False: nothing to do
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message and str(tmp_path / "data") in message
    assert "train-images-idx3-ubyte.gz" in message and "not-installed" in message


def test_failed_download_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", offline)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "fmnist"), download=True)
    with pytest.raises(FileNotFoundError, match="downloading Fashion-MNIST into .*fmnist failed"):
        dm.prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0, got -1"),
        ({"val_size": 1.5}, r"val_size must be a count .* got 1.5"),
        ({"val_size": -3}, "val_size must be an integer >= 0, got -3"),
        ({"train_subset": 0}, "train_subset must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(**kwargs)


def test_val_size_must_leave_training_images() -> None:
    dm = FashionMNISTDataModule(train_subset=100)  # default val_size=5000
    with pytest.raises(ValueError, match=r"val_size=5000 leaves no .* 100 images \(train_subset"):
        dm._split_indices(60_000)
    assert len(FashionMNISTDataModule(val_size=5000.0)._split_indices(60_000)[1]) == 5000


def test_classes_keeps_only_those_relabelled_in_order(fashion_mnist_dir: Path) -> None:
    dm = FashionMNISTDataModule(
        data_dir=str(fashion_mnist_dir), classes=[9, 5, 7], train_subset=300, val_size=0.2
    )
    assert dm.num_classes == 3 and dm.class_names == ["Ankle boot", "Sandal", "Sneaker"]
    assert FashionMNISTDataModule.class_names == fm.CLASS_NAMES  # the class's list is untouched
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set)) == (240, 60)  # the subset counts kept images
    assert torch.bincount(dm.test_set.labels).tolist() == [1000, 1000, 1000]
    images = torch.from_numpy(read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"))
    labels = torch.from_numpy(read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")).long()
    for new, old in enumerate([9, 5, 7]):  # label i is the i-th listed class, file order kept
        assert torch.equal(dm.test_set.images[dm.test_set.labels == new, 0], images[labels == old])
    assert set(dm.train_set.labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([3], "2 or more distinct class indices, got \\[3\\]"),
        ([1, 1], "2 or more distinct class indices, got \\[1, 1\\]"),
        ([2, 10], "indices in 0..9, got \\[2, 10\\]"),
        ([-1, 2], "indices in 0..9, got \\[-1, 2\\]"),
    ],
)
def test_bad_classes_are_named(classes: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(classes=classes)
