"""Regenerates the documentation's pictures (docs/images/*.png) from one short run.

    python scripts/docs_figures.py                 # about a minute on 2 CPU cores
    python scripts/docs_figures.py --epochs 1 --train-subset 512   # seconds: a smoke run

A small-image ResNet-18 (1/8 width, one unit per stage, 78k parameters) is trained on a
Fashion-MNIST subset (Debian's dataset-fashion-mnist, read offline) and tested; then the
pictures every run makes are drawn from it: learning curves, confusion matrix, most confused
pairs, top losses with Grad-CAM, one Grad-CAM, the network's diagram (and GoogLeNet's), and,
where Debian's chromium + chromium-driver are installed, a screenshot of the run report.
Each PNG is saved at 80 dpi with a 256-colour palette, so all of them stay under ~200 KB and
can be committed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
from PIL import Image

import moderncnn
from moderncnn import FashionMNISTDataModule, ImageClassifier, Trainer
from moderncnn.viz.interpret import plot_most_confused

DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
SMALL = {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}  # the quickstart's widths
TITLE = "resnet18_cifar (78k parameters), a short run on Fashion-MNIST"


def save_small(figure, path: Path, dpi: int = 80) -> Path:
    """The figure as a palette PNG: a tenth of the bytes of matplotlib's RGBA file."""
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def report_screenshot(report: Path, path: Path) -> Path | None:
    """The run report in headless Chromium (Debian's), or None where it is not installed."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,1400"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.get(report.resolve().as_uri())
        browser.save_screenshot(str(path))
    finally:
        browser.quit()
    image = Image.open(path).convert("RGB")
    image.resize((image.width // 2, image.height // 2)).quantize(256).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS_IMAGES, help="folder of the PNGs")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--train-subset", type=int, default=6000, help="training images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(42)
    data = FashionMNISTDataModule(train_subset=args.train_subset, val_size=1000, batch_size=128)
    model = ImageClassifier("resnet18_cifar", num_classes=10, in_chans=1, model_kwargs=SMALL)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            max_epochs=args.epochs, default_root_dir=tmp, limit_test_batches=20,
            enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        )  # fmt: skip
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, ckpt_path="best")
        run = Path(trainer.log_dir)
        written = [
            save_small(moderncnn.plot_curves(run, title=TITLE), args.out / "curves.png"),
            save_small(
                moderncnn.plot_confusion_matrix(run, title=TITLE), args.out / "confusion_matrix.png"
            ),
            save_small(plot_most_confused(run), args.out / "most_confused.png"),
            save_small(moderncnn.plot_top_losses(model, data, k=9), args.out / "top_losses.png"),
        ]
        data.setup("test")
        boot = next(i for i, y in enumerate(data.test_set.labels.tolist()) if y == 9)
        boot_file = Path(tmp) / "ankle_boot.png"  # a file: explain prepares it by the card
        Image.fromarray(data.test_set.images[boot][0].numpy()).save(boot_file)
        (explanation,) = moderncnn.explain(model, [boot_file])
        written.append(save_small(explanation.figure(), args.out / "gradcam.png"))
        diagram = moderncnn.plot_architecture(model.model, (1, 28, 28))
        written.append(save_small(diagram, args.out / "diagram_resnet.png"))
        shot = report_screenshot(moderncnn.write_report(run), args.out / "report.png")
        written += [shot] if shot else []
    for path in written:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
    total = sum(path.stat().st_size for path in written) / 1024
    print(f"{len(written)} pictures, {total:.0f} KB in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
