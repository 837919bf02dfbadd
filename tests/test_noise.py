"""A run prints only what its user can act on: the silenced messages, named in one place."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lightning.pytorch.utilities.model_summary import summarize

from moderncnn import Trainer, summary
from moderncnn.data import FashionMNISTDataModule
from moderncnn.io.noise import SILENCED_LOG_LINES, SILENCED_WARNINGS, silence_known_noise
from moderncnn.training.module import ImageClassifier

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_each_silenced_message_says_why() -> None:
    for start, why in [*SILENCED_WARNINGS, *SILENCED_LOG_LINES]:
        assert start and len(why) > 30


def test_known_noise_is_silenced_and_other_warnings_are_not() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        for start, _ in SILENCED_WARNINGS:
            warnings.warn(f"{start} (the rest of the message)", UserWarning, stacklevel=1)
        warnings.warn("your own deprecation", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["your own deprecation"]


def test_a_trainer_prints_no_advertisement(tmp_path, capfd, caplog) -> None:
    with caplog.at_level(logging.INFO):
        Trainer(default_root_dir=tmp_path, accelerator="cpu")
    printed = "".join(capfd.readouterr()) + caplog.text
    assert "GPU available" in printed  # Lightning's other lines still show
    assert "Tip:" not in printed and "litlogger" not in printed


def test_the_model_summary_counts_flops_at_the_datas_image_size(tmp_path) -> None:
    """Every run printed "Total FLOPs: 0": the module had no example input. It now has one
    blank image of the data's size, which Lightning's summary runs through the network (and
    through the data module's batch hook, which must take it as it is)."""
    data = FashionMNISTDataModule(
        data_dir=FASHION_MNIST_DIR, batch_size=16, train_subset=32, val_size=16
    )
    model = ImageClassifier(
        "resnet18_cifar",
        num_classes=10,
        in_chans=1,
        model_kwargs={"channels": [4, 8], "layers": [1, 1]},
    )
    assert summarize(model).total_flops == 0  # no example input before the data is known
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    assert tuple(model.example_input_array.shape) == (1, 1, 28, 28)
    table = summarize(model)
    macs = summary(model.model, (1, 28, 28)).macs
    assert table.total_flops == 2 * macs  # FLOPs: a multiply and an add per MAC
    assert table.in_sizes[0] == [1, 1, 28, 28] and table.out_sizes[0] == [1, 10]
