"""The top-loss report keeps the k worst test images across batches, and a network Grad-CAM
cannot map still gets its grid (without the maps) instead of a failed test run."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from moderncnn.training.top_losses import TOP_LOSSES_CSV, TopLossesReport


def _run(
    report: TopLossesReport, module: nn.Module, tmp_path: Path, datamodule: object = None
) -> tuple[list[dict[str, str]], torch.Tensor]:
    trainer = SimpleNamespace(
        loggers=[SimpleNamespace(log_dir=str(tmp_path))], is_global_zero=True, datamodule=datamodule
    )
    generator = torch.Generator().manual_seed(0)
    report.on_test_epoch_start(trainer, module)
    every = []
    for batch_idx in range(3):
        images = torch.rand(5, 1, 8, 8, generator=generator)
        labels = torch.randint(0, 3, (5,), generator=generator)
        with torch.inference_mode():  # as in Lightning's test loop
            logits = module(images)
        report.on_test_batch_end(trainer, module, logits, (images, labels), batch_idx)
        every.append(nn.functional.cross_entropy(logits, labels, reduction="none"))
    report.on_test_epoch_end(trainer, module)
    with (tmp_path / TOP_LOSSES_CSV).open() as file:
        return list(csv.DictReader(file)), torch.cat(every)


@pytest.mark.parametrize("convolutional", [True, False])
def test_the_k_worst_of_all_batches_are_kept(convolutional: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    if convolutional:
        module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    else:  # nothing for Grad-CAM to map: a warning, and the grid without overlays
        module = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    if convolutional:
        rows, every = _run(TopLossesReport(k=4), module, tmp_path)
    else:
        with pytest.warns(UserWarning, match="top losses drawn without Grad-CAM"):
            rows, every = _run(TopLossesReport(k=4), module, tmp_path)
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 4 and losses == sorted(losses, reverse=True)
    worst = every.topk(4)
    assert [int(r["test_index"]) for r in rows] == worst.indices.tolist()  # of all 15 images
    assert losses == pytest.approx(worst.values.tolist(), abs=1e-4)
    assert (tmp_path / "top_losses.png").stat().st_size > 1000


def test_top_losses_name_each_images_file(tmp_path: Path) -> None:
    """For a photo folder, finding the mislabelled photos is the point: the CSV names files."""
    files = [Path(f"/photos/class {i % 3}/img_{i}.png") for i in range(15)]
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    samples = [(file, i % 3) for i, file in enumerate(files)]
    data = SimpleNamespace(test_set=SimpleNamespace(samples=samples))
    rows, _ = _run(TopLossesReport(k=4), module, tmp_path, datamodule=data)
    assert [r["file"] for r in rows] == [str(files[int(r["test_index"])]) for r in rows]
    plain, _ = _run(TopLossesReport(k=4), module, tmp_path / "tensors")  # no files: no column
    assert "file" not in plain[0]


def test_the_report_lists_the_top_losses_files(tmp_path: Path) -> None:
    from moderncnn import write_report

    (tmp_path / "metrics.csv").write_text("epoch,step,val_acc\n0,1,0.5\n")
    (tmp_path / TOP_LOSSES_CSV).write_text(
        "test_index,true,predicted,loss,p_true,p_predicted,file\n"
        "3,cat,dog,2.0,0.1,0.8,/photos/cat/<b>x.png\n"
    )
    page = Path(write_report(tmp_path)).read_text()
    assert "<th>file</th>" in page and "/photos/cat/&lt;b&gt;x.png" in page
