"""What a student does in Jupyter, run in a real kernel (nbclient): training, figures, configs.

Each test runs a few cells in a fresh kernel, as a notebook would, and looks at the cells'
outputs: errors, text, and the pictures (``image/png``) each cell shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
# Tiny limits of the quickstart config: a run of seconds.
TINY_RUN = (
    '**{"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, '
    '"trainer.limit_val_batches": 1, "trainer.limit_test_batches": 1}'
)


def run_cells(cells: list[str], folder: Path, timeout: int = 300) -> list[list[dict[str, Any]]]:
    """Runs ``cells`` in a new kernel whose working folder is ``folder``; each cell's outputs.

    A cell that raises fails the test with its traceback (nbclient's CellExecutionError).
    """
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    return [cell.outputs for cell in book.cells]


def text_of(outputs: list[dict[str, Any]]) -> str:
    parts = [o.get("text", "") for o in outputs if o.get("output_type") == "stream"]
    parts += [o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o]
    return "".join(parts)


def pngs(outputs: list[dict[str, Any]]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_from_config_fits_and_tests_in_a_notebook(fashion_mnist_dir: Path, tmp_path) -> None:
    """Rich's live bar (Lightning's default) made `trainer.test` recurse without end under
    ipykernel when a callback printed: every trainer we build shows text progress instead."""
    config = REPO / "configs" / "quickstart.yaml"
    outputs = run_cells(
        [
            "from moderncnn import from_config\n"
            f"model, data, trainer = from_config({str(config)!r}, {TINY_RUN})",
            "trainer.fit(model, datamodule=data)",
            "results = trainer.test(model, datamodule=data)\nresults",
            "from lightning.pytorch.callbacks import TQDMProgressBar\n"
            "type(trainer.progress_bar_callback).__name__",
        ],
        tmp_path,
    )
    assert "test_acc" in text_of(outputs[2])
    assert "'TQDMProgressBar'" in text_of(outputs[3])
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "confusion_matrix.png").is_file()
    assert (run / "per_class_accuracy.csv").is_file()
