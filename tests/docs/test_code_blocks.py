"""Every ```python block of the site runs, page by page, on tiny settings.

A page's blocks run in order in one fresh namespace, in a temporary folder holding what the
pages name (``my_images/`` with two classes, ``photo.jpg``, ``more_photos/``). Markers, an
HTML comment on the line before a block:

- ``<!-- docs-test: settings -->``: the page's settings; the test runs its own tiny ones
  (``TINY`` below) in its place, as tests/test_examples.py does for the notebooks.
- ``<!-- docs-test: network (why) -->`` / ``<!-- docs-test: gpu (why) -->``: not run here;
  the reason is required.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*(.*?)\s*-->\s*\n)?```python\n(.*?)```", re.S)
SKIP = re.compile(r"^(network|gpu) \((.+)\)$")

TINY = {
    "tutorials/resnet.md": "MAX_EPOCHS = 1\nTRAIN_SUBSET = 128\nVAL_SIZE = 32\nBATCH_SIZE = 32\n"
    "LIMIT_TEST_BATCHES = 1",
    "tutorials/densenet-probe.md": "PRETRAIN_EPOCHS = 1\nPRETRAIN_SUBSET = 200\n"
    "IMAGES_PER_CLASS = 12",
    "tutorials/googlenet.md": "MAX_EPOCHS = 1\nTRAIN_SUBSET = 128\nVAL_SIZE = 32\n"
    "BATCH_SIZE = 16\nLIMIT_TRAIN_BATCHES = 2\nWIDTH = 0.125",
    "tutorials/degradation.md": "STEPS = 4\nVAL_EVERY = 2\nBATCH_SIZE = 16\nTRAIN_SUBSET = 160\n"
    "VAL_SIZE = 32\nLIMIT_TEST_BATCHES = 1\nSEEDS = 1\nNET_KWARGS = {'channels': [4, 8, 8]}\n"
    "MODELS = ['plain20', 'resnet20']",
    "how-to/compare-tune.md": "MODELS = ['resnet18_cifar', 'densenet121_cifar']\nSEEDS = 1\n"
    "MAX_EPOCHS = 1\nLIMIT_BATCHES = 1",
}
# Lightning's own environment defaults for every Trainer a page builds without saying.
TRAINER_ENV = {
    "PL_TRAINER_LIMIT_TRAIN_BATCHES": "2",
    "PL_TRAINER_LIMIT_VAL_BATCHES": "2",
    "PL_TRAINER_LIMIT_TEST_BATCHES": "2",
    "PL_TRAINER_ENABLE_PROGRESS_BAR": "0",
    "PL_TRAINER_ENABLE_MODEL_SUMMARY": "0",
}


def blocks(page: Path) -> list[tuple[str | None, str]]:
    """(marker, code) of each ```python block, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


PAGES = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if blocks(p))


def test_markers_are_known_and_give_their_reason() -> None:
    for name in PAGES:
        markers = [marker for marker, _ in blocks(DOCS / name) if marker]
        for marker in markers:
            assert marker == "settings" or SKIP.match(marker), f"{name}: {marker!r}"
        assert ("settings" in markers) == (name in TINY), name
    assert len(PAGES) >= 10  # the tutorials and how-tos have their code on the page


def _inputs(folder: Path) -> None:
    """What the pages name: an image folder of two classes and a few loose photos."""
    rng = np.random.default_rng(0)
    for label, tint in (("cat", 40), ("dog", 200)):
        (folder / "my_images" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8) + tint
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                folder / "my_images" / label / f"{i}.png"
            )
    photo = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    photo.save(folder / "photo.jpg")
    (folder / "more_photos").mkdir()
    photo.save(folder / "more_photos" / "a.png")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAGES)
def test_the_page_s_python_runs(name: str, tmp_path: Path, monkeypatch, request) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    if "FashionMNISTDataModule" in text or "quickstart" in text or "papers/" in text:
        request.getfixturevalue("fashion_mnist_dir")  # skips without Debian's files
    for key, value in TRAINER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    backend = matplotlib.get_backend()
    namespace: dict = {"__name__": f"docs_{Path(name).stem}"}
    ran = 0
    try:
        for index, (marker, code) in enumerate(blocks(DOCS / name)):
            if marker and SKIP.match(marker):
                continue
            source = TINY[name] if marker == "settings" else code
            exec(compile(source, f"docs/{name} block {index + 1}", "exec"), namespace)
            ran += 1
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    if ran == 0:
        pytest.skip(f"docs/{name}: every block needs a network or a GPU (marked)")
    assert matplotlib.get_backend() == backend  # no page switches the reader's backend
