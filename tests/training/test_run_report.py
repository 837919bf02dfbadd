"""The run report (``report.html``) and the interpretation files a test writes, from one real
fit + test on an image folder whose class names are hostile markup; and the page opened in
headless Chromium."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from moderncnn.cli import main as cli

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
HOSTILE = "<script>alert(1)"  # a folder name cannot hold "/": no closing tag needed
NAMES = {0: HOSTILE, 1: "Tom & <b>Jerry", 7: "=SUM(A1)"}  # Fashion-MNIST label -> class


def _image_folder(root: Path) -> Path:
    with gzip.open(FASHION_MNIST) as file:
        pixels = np.frombuffer(file.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST.with_name("t10k-labels-idx1-ubyte.gz")) as file:
        labels = np.frombuffer(file.read(), np.uint8, offset=8)
    for label, name in NAMES.items():
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == label)[:40]:
            Image.fromarray(pixels[i]).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lightning_logs/version_0 of a two-epoch fit with a test at the end (~15 s)."""
    if not FASHION_MNIST.is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (bash scripts/setup.sh --test)")
    where = tmp_path_factory.mktemp("report")
    config = {
        "seed_everything": 0,
        "test_after_fit": True,
        "model": {
            "model": "resnet18_cifar",
            "model_kwargs": {"channels": [8, 16], "layers": [1, 1]},
            "lr": 0.05,
        },
        "data": {
            "class_path": "moderncnn.data.ImageFolderDataModule",
            "init_args": {
                "root": str(_image_folder(where / "images")),
                "image_size": 28,
                "val_fraction": 0.2,
                "test_fraction": 0.25,
                "batch_size": 16,
                "augmentations": [],
            },
        },
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    (where / "config.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(where)
    try:
        assert cli(["fit", "-c", "config.yaml"]) == 0
    finally:
        os.chdir(cwd)
    return where / "lightning_logs" / "version_0"


def test_test_writes_most_confused_and_top_losses(run: Path) -> None:
    with (run / "confusion_matrix.csv").open() as file:
        header, *rows = list(csv.reader(file))
    counts = np.array([[int(v) for v in row[1:]] for row in rows])
    with (run / "most_confused.csv").open() as file:
        pairs = list(csv.DictReader(file))
    off = counts - np.diag(np.diag(counts))
    assert [int(p["images"]) for p in pairs] == sorted(off[off > 0].tolist(), reverse=True)[:10]
    with (run / "top_losses.csv").open() as file:
        losses = list(csv.DictReader(file))
    test_images = int(counts.sum())
    assert len(losses) == min(16, test_images)
    assert [float(r["loss"]) for r in losses] == sorted(
        (float(r["loss"]) for r in losses), reverse=True
    )
    assert all(0 <= int(r["test_index"]) < test_images for r in losses)
    assert {r["true"] for r in losses} <= {HOSTILE, "Tom & <b>Jerry", "'=SUM(A1)"}
    assert Image.open(run / "top_losses.png").size[0] > 300


def _embedded_pngs(html: str) -> list[Image.Image]:
    sources = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in sources]


def test_the_report_is_one_self_contained_escaped_page(run: Path, capsys) -> None:
    html = (run / "report.html").read_text()
    facts = json.loads((run / "run.json").read_text())
    assert len(_embedded_pngs(html)) == 4  # curves, confusion, confused pairs, top losses
    assert "<script" not in html and "&lt;script&gt;alert(1)" in html
    assert "Tom &amp; &lt;b&gt;Jerry" in html and "<b>Jerry" not in html
    assert f"<th>parameters</th><td>{facts['parameters']:,}</td>" in html
    assert "<th>test accuracy</th>" in html and "<th>best val accuracy</th>" in html
    assert "Layers" in html and "layer2" in facts["summary"] and "model_kwargs" in html
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing fetched
    # `moderncnn report` again: the same page, rewritten in place
    before = (run / "report.html").read_bytes()
    assert cli(["report", str(run)]) == 0
    assert f"run report: {run / 'report.html'}" in capsys.readouterr().out
    after = (run / "report.html").read_bytes()
    folder_line = re.compile(rb'<p class="folder">[^<]*</p>')  # as given: relative, absolute
    assert folder_line.sub(b"", after) == folder_line.sub(b"", before)


def test_test_alone_writes_its_own_report(run: Path, capsys) -> None:
    where = run.parent.parent
    cwd = os.getcwd()
    os.chdir(where)
    try:
        assert cli(["test", "-c", "config.yaml", "--ckpt_path", "best"]) == 0
    finally:
        os.chdir(cwd)
    tested = where / "lightning_logs" / "version_1"
    printed = capsys.readouterr().out
    assert f"run report: {Path('lightning_logs/version_1/report.html')}" in printed
    html = (tested / "report.html").read_text()
    facts = json.loads((tested / "run.json").read_text())
    assert "best-epoch=" in facts["tested_checkpoint"] and facts["test_images"] == 30
    assert "<th>test accuracy</th>" in html and "no curves.png in this run folder" in html
    assert len(_embedded_pngs(html)) == 3  # confusion, confused pairs, top losses
    assert (run / "report.html").is_file()  # the fit's page is left as it was


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path, capsys) -> None:
    assert cli(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"moderncnn report: error: {tmp_path} is not a run folder" in err
    assert cli(["report", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver: sudo apt-get install chromium "
    "chromium-driver (scripts/setup.sh --test installs them)",
)
def test_the_report_in_headless_chromium(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get((run / "report.html").resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
        )
        assert len(images) == 4 and all(done and width > 0 for done, width in images)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        assert driver.execute_script("return document.scripts.length;") == 0
        cells = driver.execute_script(
            "return Array.from(document.querySelectorAll('td')).map(td => td.textContent);"
        )
        assert HOSTILE in cells and "Tom & <b>Jerry" in cells  # shown as text
        shot = run / "report_screenshot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 100 and pixels.std() > 10  # not blank
    print(f"screenshot: {shot}")
