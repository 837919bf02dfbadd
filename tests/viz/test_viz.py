"""Figures: metrics.csv reading, curves, confusion matrix and image grids; all return Figure
objects, save only when asked, and leave matplotlib's backend as it was."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
import yaml
from matplotlib.figure import Figure

from moderncnn.cli import main as cli_main
from moderncnn.data import FashionMNISTDataModule
from moderncnn.io.errors import ConfigError, DataError, MissingFileError
from moderncnn.models import create_model
from moderncnn.viz import (
    plot_confusion_matrix,
    plot_curves,
    plot_top_losses,
    read_confusion_matrix,
    read_metrics,
    show_batch,
    show_results,
)
from moderncnn.viz.confusion import write_confusion_matrix
from moderncnn.viz.curves import read_learning_rates

PNG = b"\x89PNG\r\n\x1a\n"

# The layout Lightning's CSVLogger writes: one sparse row per logging call; the learning rate
# (LearningRateMonitor) at the step a batch starts, without an epoch. Two epochs of 3 steps.
SPARSE_CSV = """epoch,lr-SGD,step,train_acc,train_acc_top5,train_loss,val_acc,val_acc_top5,val_loss
,0.1,0,,,,,,
,0.05,3,,,,,,
0,,2,,,,0.5,0.9,1.2
0,,2,0.4,0.8,1.5,,,
1,,5,,,,0.7,0.95,0.9
1,,5,0.6,0.9,1.1,,,
"""


@pytest.fixture(autouse=True)
def _backend_unchanged():
    """Every test here: matplotlib's backend is the same after the plotting as before."""
    before = matplotlib.rcParams._get_backend_or_none()
    yield
    assert matplotlib.rcParams._get_backend_or_none() == before


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "metrics.csv").write_text(SPARSE_CSV)
    (tmp_path / "hparams.yaml").write_text("model: resnet18_cifar\nlr: 0.1\n")
    return tmp_path


def test_read_metrics_merges_the_rows_of_an_epoch(run_dir: Path) -> None:
    epochs = read_metrics(run_dir / "metrics.csv")
    assert epochs[0] == {
        "train_acc": 0.4,
        "train_acc_top5": 0.8,
        "train_loss": 1.5,
        "val_acc": 0.5,
        "val_acc_top5": 0.9,
        "val_loss": 1.2,
    }
    assert sorted(epochs) == [0, 1]


def test_learning_rate_steps_are_placed_in_their_epochs(run_dir: Path) -> None:
    # step 0 starts epoch 0, step 3 starts epoch 1 (epoch 0 ended at step 2)
    assert read_learning_rates(run_dir) == {"lr-SGD": [(0.0, 0.1), (1.0, 0.05)]}


def test_curves_have_named_panels_integer_epochs_and_the_model_in_the_title(
    run_dir: Path,
) -> None:
    figure = plot_curves(run_dir)
    assert isinstance(figure, Figure)
    assert [ax.get_ylabel() for ax in figure.axes] == [
        "loss",
        "accuracy",
        "top-5 accuracy",
        "learning rate",
    ]
    assert figure.get_suptitle().startswith("resnet18_cifar")
    loss = figure.axes[0]
    assert [list(line.get_xdata()) for line in loss.get_lines()] == [[0, 1], [0, 1]]  # from 0
    figure.canvas.draw()  # tick positions are known once drawn
    ticks = [t for t in loss.get_xticks() if loss.get_xlim()[0] <= t <= loss.get_xlim()[1]]
    assert ticks == [0, 1]
    assert not list(run_dir.glob("*.png"))  # nothing saved unless asked


def test_curves_of_a_resumed_run_merge_both_files(run_dir: Path, tmp_path: Path) -> None:
    second = tmp_path / "b.csv"
    second.write_text("epoch,step,val_acc\n1,5,0.8\n2,8,0.85\n")
    out = tmp_path / "out" / "curves.png"
    figure = plot_curves([run_dir / "metrics.csv", second], save=out)
    val_acc = next(ln for ln in figure.axes[1].get_lines() if ln.get_label() == "val_acc")
    assert list(val_acc.get_ydata()) == [0.5, 0.8, 0.85]  # later file wins for epoch 1
    assert out.read_bytes()[:8] == PNG


def test_plot_of_a_folder_without_metrics_fails_clearly(tmp_path: Path, capsys) -> None:
    assert cli_main(["plot", str(tmp_path)]) == 1
    assert f"{tmp_path / 'metrics.csv'} does not exist" in capsys.readouterr().err
    with pytest.raises(MissingFileError, match="metrics.csv"):
        plot_curves(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,step,val_acc\n")
    with pytest.raises(DataError, match="no rows with an epoch"):
        plot_curves(tmp_path)


def test_plot_command_writes_curves_png(run_dir: Path) -> None:
    assert cli_main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG


def test_confusion_matrix_from_counts_and_from_a_run(tmp_path: Path) -> None:
    counts = torch.tensor([[5, 1], [2, 7]])
    figure = plot_confusion_matrix(counts, ["cat", "dog"], save=tmp_path / "cm.png")
    assert isinstance(figure, Figure) and (tmp_path / "cm.png").read_bytes()[:8] == PNG
    assert figure.axes[0].get_title() == "accuracy 80.00%"
    write_confusion_matrix(tmp_path / "confusion_matrix.csv", counts, ["cat", "dog"])
    assert torch.equal(read_confusion_matrix(tmp_path)[0], counts)
    texts = [t.get_text() for t in plot_confusion_matrix(tmp_path).axes[0].texts]
    assert texts == ["5", "1", "2", "7"]
    with pytest.raises(DataError, match=r"confusion matrix is \(2, 2\) but there are 3 classes"):
        plot_confusion_matrix(torch.eye(2), ["a", "b", "c"])
    with pytest.raises(MissingFileError, match="test the run first"):
        plot_confusion_matrix(tmp_path / "elsewhere")


@pytest.fixture(scope="module")
def fashion(fashion_mnist_dir_module: Path) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(
        data_dir=str(fashion_mnist_dir_module), train_subset=64, val_size=32, batch_size=16
    )


@pytest.fixture(scope="module")
def fashion_mnist_dir_module() -> Path:
    path = Path("/usr/share/datasets/fashion-mnist")
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (scripts/setup.sh)")
    return path


def test_show_batch_titles_images_with_class_names(fashion: FashionMNISTDataModule) -> None:
    figure = show_batch(fashion, n=6, split="val")
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 6 and set(titles) <= set(fashion.class_names)
    assert len([ax for ax in figure.axes if ax.images]) == 6


def test_show_results_marks_wrong_predictions(fashion: FashionMNISTDataModule) -> None:
    model = create_model(
        "resnet18_cifar", num_classes=10, in_chans=1, channels=(8, 16), layers=(1, 1)
    )
    model.train()
    figure = show_results(model, fashion, n=8)
    assert model.training  # its mode is restored
    axes = [ax for ax in figure.axes if ax.images]
    assert len(axes) == 8
    first_val_labels = next(iter(fashion.val_dataloader()))[1][:8].tolist()
    truths = [ax.get_title().split("\n")[0] for ax in axes]
    assert truths == [fashion.class_names[i] for i in first_val_labels]
    wrong = [ax for ax in axes if ax.title.get_color() == "#cf222e"]
    right = int(figure.get_suptitle().split("), ")[1].split(" of")[0])
    assert len(wrong) == 8 - right


def test_top_losses_are_sorted_and_limited(fashion: FashionMNISTDataModule) -> None:
    model = create_model(
        "resnet18_cifar", num_classes=10, in_chans=1, channels=(8, 16), layers=(1, 1)
    )
    figure = plot_top_losses(model, fashion, k=4, max_images=20)
    losses = [
        float(ax.get_title().split("loss ")[1].split(",")[0]) for ax in figure.axes if ax.images
    ]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True)
    assert "of 20 val images" in figure.get_suptitle()


def test_top_losses_with_gradcam_draw_each_image_under_its_map(
    fashion: FashionMNISTDataModule,
) -> None:
    model = create_model(
        "resnet18_cifar", num_classes=10, in_chans=1, channels=(8, 16), layers=(1, 1)
    )
    plain = plot_top_losses(model, fashion, k=4, max_images=20)
    mapped = plot_top_losses(model, fashion, k=4, max_images=20, gradcam=True)
    grey = [ax.images[0].get_array() for ax in plain.axes if ax.images]
    overlaid = [ax.images[0].get_array() for ax in mapped.axes if ax.images]
    assert len(overlaid) == 4 and all(a.ndim == 3 and a.shape[-1] == 3 for a in overlaid)
    assert all(g.ndim == 2 for g in grey)  # the same images, grey without the map
    # the overlay is the grey image where the map is 0 and jet colours where it is high
    assert any(abs(o[..., 0] - o[..., 2]).max() > 0.1 for o in overlaid)
    assert [ax.get_title() for ax in plain.axes] == [ax.get_title() for ax in mapped.axes]


def test_most_confused_pairs_are_the_largest_off_diagonal_counts(tmp_path: Path) -> None:
    from moderncnn.viz.interpret import most_confused, plot_most_confused

    counts = torch.tensor([[5, 3, 0], [7, 4, 1], [0, 3, 9]])
    assert most_confused(counts, ["a", "b", "c"], n=3) == [
        ("b", "a", 7), ("a", "b", 3), ("c", "b", 3),
    ]  # fmt: skip
    assert most_confused(counts, n=10)[-1] == ("1", "2", 1)  # zero counts are not pairs
    assert most_confused(torch.eye(3, dtype=torch.long) * 4) == []
    figure = plot_most_confused(counts, ["a", "b", "$x$"], n=2, save=tmp_path / "c.png")
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["a \u2192 b", "b \u2192 a"] and (tmp_path / "c.png").is_file()
    with pytest.raises(ConfigError, match="a confusion matrix is square"):
        most_confused(torch.zeros(2, 3))


def test_preview_draws_a_grid_of_the_configs_data(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    data = {"data_dir": str(fashion_mnist_dir), "train_subset": 256, "val_size": 16}
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"model": "resnet18_cifar"},  # other sections are ignored
                "data": {"class_path": "FashionMNISTDataModule", "init_args": data},
            }
        )
    )
    out = tmp_path / "grid.png"
    assert cli_main(["preview", "-c", str(config), "--out", str(out), "--n", "12"]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5_000


def test_preview_names_a_bad_data_section(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  class_path: FashionMNISTDataModule\n  init_args: {batchsize: 8}\n")
    assert cli_main(["preview", "-c", str(config)]) == 1
    assert "batchsize" in capsys.readouterr().err


def test_nothing_in_the_package_calls_matplotlib_use() -> None:
    package = Path(__file__).resolve().parents[2] / "moderncnn"
    offenders = [p for p in package.rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert offenders == []


def test_grids_and_bars_read_alike() -> None:
    """show_results, plot_top_losses and most_confused all read "true, then predicted"; the
    most-confused bars count images, so their ticks are whole numbers."""
    from moderncnn.viz.images import loss_titles
    from moderncnn.viz.interpret import plot_most_confused

    probs = torch.tensor([[0.2, 0.8]])
    losses = torch.tensor([1.6])
    titles, _ = loss_titles(["cat", "dog"], torch.tensor([1]), torch.tensor([0]), losses, probs)
    assert titles[0].startswith("cat / dog")  # true cat, predicted dog
    figure = plot_most_confused([[0, 1], [2, 0]], ["cat", "dog"])
    ticks = figure.axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
