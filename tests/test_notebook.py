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
    assert [pngs(out) for out in outputs] == [0, 0, 0, 0]  # the run's figures are files
    assert "test_acc" in text_of(outputs[2])
    assert "'TQDMProgressBar'" in text_of(outputs[3])
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "confusion_matrix.png").is_file()
    assert (run / "per_class_accuracy.csv").is_file()


FIGURE_CELLS = {
    # cell: the pictures it must show
    "fig = plot_confusion_matrix(counts, names)": 1,
    "plot_confusion_matrix(counts, names)": 1,
    "for _ in range(2):\n    plot_confusion_matrix(counts, names)": 2,
    "plot_confusion_matrix(counts, names)\nplt.show()": 1,
    "plot_confusion_matrix(counts, names, save='cm.png')\nplt.show()\nplt.close('all')": 1,
    "fig": 1,  # a figure of an earlier cell, named again
    "results = explain(network, torch.rand(2, 3, 32, 32))": 2,
    "results[0].target in ['0', '1', '2'], results[0]": 0,
    "assert matplotlib.get_backend() == backend, matplotlib.get_backend()": 0,
}


@pytest.mark.slow
def test_figures_show_once_wherever_the_call_stands(tmp_path) -> None:
    """A figure appears once where it is made (assigned, in a loop, before plt.show(), as the
    cell's value), explain shows its pictures, and the backend stays the user's."""
    setup = (
        "import matplotlib\nbackend = matplotlib.get_backend()\n"
        "import matplotlib.pyplot as plt\nimport torch\n"
        "from moderncnn import create_model, explain, plot_confusion_matrix\n"
        "names = ['cat', 'dog', 'fox']\ncounts = [[5, 1, 0], [2, 6, 1], [0, 1, 7]]\n"
        "network = create_model('resnet18_cifar', num_classes=3, channels=[4, 8, 8, 8],"
        " layers=[1, 1, 1, 1]).eval()"
    )
    outputs = run_cells([setup, *FIGURE_CELLS], tmp_path)
    assert pngs(outputs[0]) == 0
    shown = {cell: pngs(out) for cell, out in zip(FIGURE_CELLS, outputs[1:], strict=True)}
    assert shown == FIGURE_CELLS
    assert "True" in text_of(outputs[-2])
    assert "tensor(" not in text_of(outputs[7])
    assert (tmp_path / "cm.png").is_file()


def readme_notebook_block() -> str:
    """The first Python block of the README's "In a notebook" section, as written."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## In a notebook", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_notebook_block_runs_as_written(
    fashion_mnist_dir: Path, tmp_path, monkeypatch
) -> None:
    """The block, one cell, with Lightning's PL_TRAINER_* switches limiting the batches: it
    shows its five figures (batch, curves, confusion matrix, results, top losses)."""
    for key in ("LIMIT_TRAIN_BATCHES", "LIMIT_VAL_BATCHES", "LIMIT_TEST_BATCHES"):
        monkeypatch.setenv(f"PL_TRAINER_{key}", "2")
    (outputs,) = run_cells([readme_notebook_block()], tmp_path, timeout=600)
    assert pngs(outputs) == 5
    assert (tmp_path / "lightning_logs" / "version_0" / "confusion_matrix.png").is_file()
