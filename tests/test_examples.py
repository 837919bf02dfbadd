"""The notebooks in examples/ run end to end (nbclient, tiny settings) and show their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Each notebook's `parameters` cell, replaced by settings that run in seconds, and the figures
# (image/png outputs) it must show.
TINY = {
    "01_resnet.ipynb": (
        "MAX_EPOCHS = 1\nTRAIN_SUBSET = 256\nVAL_SIZE = 64\nBATCH_SIZE = 64\n"
        "LIMIT_TEST_BATCHES = 2",
        4,  # batch, curves, confusion matrix, results
    ),
    "02_densenet_transfer.ipynb": (
        "PRETRAIN_EPOCHS = 1\nPRETRAIN_SUBSET = 200\nIMAGES_PER_CLASS = 12\nPROBE_EPOCHS = 5",
        1,  # batch of the image folder
    ),
    "03_googlenet_inception.ipynb": (
        "MAX_EPOCHS = 1\nTRAIN_SUBSET = 128\nVAL_SIZE = 32\nBATCH_SIZE = 32\n"
        "LIMIT_TRAIN_BATCHES = 2",
        1,  # curves
    ),
    "04_degradation.ipynb": (
        "STEPS = 4\nVAL_EVERY = 2\nBATCH_SIZE = 16\nTRAIN_SUBSET = 160\nVAL_SIZE = 32\n"
        "LIMIT_TEST_BATCHES = 1\nSEEDS = 1\nNET_KWARGS = {'channels': [4, 8, 8]}",
        1,  # the degradation curves
    ),
}
BACKEND_BEFORE = "import matplotlib\n_backend = matplotlib.get_backend()"
BACKEND_AFTER = "assert matplotlib.get_backend() == _backend, matplotlib.get_backend()"


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(TINY)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_and_shows_its_figures(name: str, fashion_mnist_dir: Path, tmp_path) -> None:
    params, figures = TINY[name]
    book = nbformat.read(EXAMPLES / name, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs one cell tagged 'parameters'"
    tagged[0].source = params
    book.cells.insert(0, nbformat.v4.new_code_cell(BACKEND_BEFORE))
    book.cells.append(nbformat.v4.new_code_cell(BACKEND_AFTER))
    client = nbclient.NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == figures
    assert all(len(o["data"]["image/png"]) > 5_000 for o in pngs)  # base64 of a real picture
