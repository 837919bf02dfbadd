"""The architecture picture: one box per stage with its output shape, Inception branches side by
side, and ``moderncnn summary NAME --diagram PNG`` (written whole or not at all)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from moderncnn import list_models
from moderncnn.cli import main as cli_main
from moderncnn.io.errors import ConfigError
from moderncnn.models import create_model
from moderncnn.viz import plot_architecture
from moderncnn.viz.diagram import architecture_stages

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _backend_unchanged():
    before = matplotlib.rcParams._get_backend_or_none()
    yield
    assert matplotlib.rcParams._get_backend_or_none() == before


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):  # shapes at the model's own input size, no compute
        return create_model(name, **kwargs)


def boxes(figure: Figure, kind: str = "stage") -> list[str]:
    """The names in the ``gid`` of every box of one kind, in drawing order."""
    gids = [p.get_gid() or "" for p in figure.axes[0].patches]
    return [g.split(":", 1)[1] for g in gids if g.startswith(f"{kind}:")]


def texts(figure: Figure) -> list[str]:
    return [t.get_text() for t in figure.axes[0].texts]


def output_shapes(model: nn.Module, depth: int = 2) -> dict[str, tuple[int, ...]]:
    """Output shape of every module down to ``depth`` that ran, by forward hook (the reference)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
        for n, m in model.named_modules()
        if n and n.count(".") < depth
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *model.input_size, device="meta"))
    for handle in handles:
        handle.remove()
    return shapes


def shape_text(shape: tuple[int, ...]) -> str:
    return " × ".join(str(d) for d in shape[1:])  # C × H × W, no batch


def covered(stage_name: str) -> list[str]:
    """``features.6–9`` -> ``features.6`` ... ``features.9``: the modules of a merged box."""
    if "–" not in stage_name:
        return [stage_name]
    prefix, first = stage_name.split("–")[0].rsplit(".", 1)
    last = stage_name.split("–")[1]
    return [f"{prefix}.{i}" for i in range(int(first), int(last) + 1)]


# ResNet-1202's 600 units take seconds to trace even on the meta device; resnet20 stands in.
ALL_MODELS = [
    pytest.param(n, marks=pytest.mark.sweep) if n == "resnet1202" else n for n in list_models()
]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_one_box_per_stage_labelled_with_its_output_shape(name: str) -> None:
    model = meta_model(name)
    figure = plot_architecture(model)
    assert isinstance(figure, Figure)
    shapes = output_shapes(model)

    # The stages are the top-level modules that ran; a mixed top-level Sequential is opened.
    expected = []
    for top, module in model.named_children():
        opened = type(module) is nn.Sequential and len({type(m) for m in module.children()}) > 1
        inner = [f"{top}.{n}" for n, _ in module.named_children() if f"{top}.{n}" in shapes]
        expected += inner if opened else [top] if top in shapes else []
    drawn = boxes(figure)
    assert sorted(sum(map(covered, drawn), [])) == sorted(expected)

    labels = texts(figure)
    for stage in architecture_stages(model, model.input_size):
        title = next(i for i, t in enumerate(labels) if t.startswith(f"{stage.name}: "))
        assert labels[title + 1].startswith(shape_text(shapes[stage.last]) + "   ·")
        if stage.branches and not stage.after_concat:  # the concat adds up to the block's output
            assert sum(b.channels for b in stage.branches) == stage.output_shape[0]


def test_resnet_stages_in_forward_order_with_block_counts() -> None:
    figure = plot_architecture("resnet50")
    assert boxes(figure) == [
        *("conv1", "bn1", "relu", "maxpool"),
        *("layer1", "layer2", "layer3", "layer4", "fc"),
    ]  # forward order: maxpool is defined before bn1 but runs after relu
    labels = texts(figure)
    assert "layer3: 6 × Bottleneck" in labels and "conv1: Conv2d  7×7/2" in labels
    assert "1024 × 14 × 14   ·   7.10M params" in labels
    assert "global pool, flatten → 2048" in labels  # the pool forward() does between boxes
    assert "layer2: 2 × BasicBlock" in texts(plot_architecture("resnet18"))


def test_googlenet_inception_block_shows_its_four_branches() -> None:
    figure = plot_architecture("googlenet")
    branches = boxes(figure, "branch")
    assert [b for b in branches if b.startswith("inception3a:")] == [
        f"inception3a:branch{i}" for i in (1, 2, 3, 4)
    ]
    assert len(branches) == 9 * 4  # nine Inception blocks
    labels = texts(figure)
    # torchvision's inception3a: 64 + 128 + 32 + 32 = 256 channels at 28 x 28.
    start = labels.index("inception3a: InceptionBlock")
    block = labels[start : labels.index("inception3b: InceptionBlock")]
    assert block[1].startswith("256 × 28 × 28")
    assert [t for t in block if t.endswith(" ch")][:4] == ["64 ch", "128 ch", "32 ch", "32 ch"]
    assert "max 3×3 → 1×1" in block and "concat → 256 ch" in block
    assert any("aux1, aux2" in t for t in labels)  # named as not drawn, not silently dropped


def test_inception_v3_pool_branch_in_forward_and_v4_runs_of_blocks() -> None:
    v3 = architecture_stages(meta_model("inception_v3"), (3, 299, 299))
    mixed_6a = next(s for s in v3 if s.name == "Mixed_6a")
    assert [(b.name, b.channels) for b in mixed_6a.branches] == [
        ("branch3x3", 384),
        ("branch3x3dbl", 96),
        ("pool", 288),  # F.max_pool2d passes the input's 288 channels through
    ]
    expanded = next(s for s in v3 if s.name == "Mixed_7b")
    assert expanded.branches[1].ops == "1×1 → 1×3 | 3×1" and expanded.branches[1].channels == 768
    v4 = [
        (s.name, s.repeats) for s in architecture_stages(meta_model("inception_v4"), (3, 299, 299))
    ]
    assert ("features.6–9", 4) in v4 and ("features.11–17", 7) in v4 and ("features.10", 1) in v4
    irv2 = architecture_stages(meta_model("inception_resnet_v2"), (3, 299, 299))
    repeat = next(s for s in irv2 if s.name == "repeat")
    assert repeat.repeats == 10 and repeat.after_concat == "concat 128 ch → 1×1 → + input"


def test_module_input_size_kwargs_and_errors(tmp_path: Path) -> None:
    figure = plot_architecture("resnet18_cifar", num_classes=10, save=tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes().startswith(PNG)
    assert "10   ·   5.13K params" in texts(figure)
    small = plot_architecture(create_model("resnet18_cifar"), input_size=(3, 16, 16))
    assert "512 × 2 × 2   ·   8.39M params" in texts(small)
    with pytest.raises(ConfigError, match="apply to a model name"):
        plot_architecture(create_model("resnet18_cifar"), num_classes=10)
    with pytest.raises(ConfigError, match=r"smaller than googlenet's minimum"):
        plot_architecture("googlenet", input_size=(3, 8, 8))


def read_png(path: Path) -> Image.Image:
    assert path.read_bytes().startswith(PNG)
    with Image.open(path) as image:
        return image.convert("RGB")


def test_cli_prints_the_table_and_writes_the_diagram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "arch.png"
    assert cli_main(["summary", "--arch", "resnet18_cifar", "--depth", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer4" in printed and "Total params" in printed  # the table, as before
    assert printed.rstrip().endswith(f"diagram: {out}")
    image = read_png(out)
    assert image.size[1] > image.size[0] > 500
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 1  # not blank

    # Again, over the old file (and with --out=PATH): a whole new file, no temporary left.
    argv = ["--arch", "googlenet_cifar", "--depth", "1", f"--out={out}", "--num_classes", "10"]
    assert cli_main(["summary", *argv]) == 0
    assert read_png(out).size[0] > image.size[0]  # googlenet wraps into columns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.png"]


def test_cli_help_lists_the_diagram_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["summary", "--help"]) == 0
    assert "--out OUT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("target", "reason"),
    [("missing/arch.png", "not found"), (".", "it is a folder"), ("arch.xyz", "unknown format")],
)
def test_cli_bad_diagram_path_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, reason: str
) -> None:
    path = tmp_path / target
    assert cli_main(["summary", "--arch", "resnet18_cifar", "--out", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # checked before the table is printed
    assert captured.err.count("\n") == 1 and str(path) in captured.err and reason in captured.err
    assert captured.err.startswith("moderncnn summary: error: cannot write the diagram to ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no folder made


def test_cli_failed_write_leaves_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "arch.png"
    out.write_bytes(b"old")

    def half_then_full_disk(self: Figure, fname: Path, **kwargs) -> None:
        Path(fname).write_bytes(PNG[:4])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_full_disk)
    assert cli_main(["summary", "--arch", "resnet18_cifar", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"moderncnn summary: error: cannot write the diagram to {out}: No space left on device\n"
    )
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["arch.png"]
