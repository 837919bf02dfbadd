"""A run prints only what its user can act on: the silenced messages, named in one place."""

from __future__ import annotations

import logging
import warnings

from moderncnn import Trainer
from moderncnn.io.noise import SILENCED_LOG_LINES, SILENCED_WARNINGS, silence_known_noise


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
