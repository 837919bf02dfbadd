"""MkDocs hooks (mkdocs.yml ``hooks:``): the reference pages, generated from the code at build time.

- ``reference/api.md``: one mkdocstrings entry (``::: module.name``) per public name of the
  package root, in the order of its lazy table, so a name added to ``moderncnn`` is documented
  from its docstring without anyone editing the page.
- ``reference/cli.md``: ``moderncnn --help`` and every command's own ``--help``, taken from the
  command table by running the parsers, so no flag, type or default is written by hand.
- ``benchmarks.md``: the result files under ``benchmarks/results/`` as the scripts wrote them,
  with their figures (served as ``images/benchmarks/*.png``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

API_MARKER = "<!-- generated: api -->"
CLI_MARKER = "<!-- generated: cli -->"
BENCHMARKS_MARKER = "<!-- generated: benchmarks -->"
# The order of the benchmarks page; a results file not named here comes after them.
BENCHMARK_ORDER = [
    "models",
    "inference",
    "data",
    "train",
    "features",
    "transfer",
    "compare",
    "degradation",
]

# Section of the API page per module prefix (longest first wins); the order of the page.
SECTIONS = [
    ("moderncnn.models", "Models"),
    ("moderncnn.inference", "Loading, predicting, sharing"),
    ("moderncnn.io", "The model card and errors"),
    ("moderncnn.data", "Data"),
    ("moderncnn.training", "Training, comparing, tuning"),
    ("moderncnn.transfer", "Transfer learning: cached features, probes"),
    ("moderncnn.viz", "Figures"),
]


def api_markdown() -> str:
    """A ``:::`` entry for every name in ``moderncnn._LAZY``, grouped by the module it lives in."""
    import moderncnn

    lazy: dict[str, str] = moderncnn._LAZY
    missing = sorted(set(moderncnn.__all__) - set(lazy))
    if missing:
        raise RuntimeError(f"moderncnn.__all__ names missing from the lazy table: {missing}")
    parts = []
    for prefix, title in SECTIONS:
        names = [name for name, module in lazy.items() if module.startswith(prefix)]
        if names:
            parts.append(f"## {title}\n")
            parts += [f"::: {lazy[name]}.{name}\n" for name in names]
    placed = {n for p, _ in SECTIONS for n, m in lazy.items() if m.startswith(p)}
    if set(lazy) - placed:
        raise RuntimeError(f"no API section for {sorted(set(lazy) - placed)}")
    return "\n".join(parts)


def _help(argv: list[str]) -> str:
    """What ``moderncnn ARGV`` prints (stdout, else stderr), run in this process."""
    from moderncnn.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(argv)
    return (out.getvalue() or err.getvalue()).rstrip()


def cli_markdown() -> str:
    """The top-level usage, then each command's ``--help`` in a collapsible block."""
    from moderncnn.cli import COMMANDS

    os.environ.setdefault("COLUMNS", "100")  # argparse wraps help at the terminal's width
    parts = ["## moderncnn\n", "```text\n" + _help(["--help"]) + "\n```\n"]
    for name in COMMANDS:
        text = _help([name, "--help"]).replace("\t", "    ")
        lines = text.count("\n") + 1
        parts.append(f"## moderncnn {name}\n")
        block = "\n".join("    " + line for line in ["```text", *text.splitlines(), "```"])
        # Long help (the LightningCLI commands list every Trainer flag) starts collapsed.
        kind = "???" if lines > 60 else "???+"
        parts.append(f'{kind} note "moderncnn {name} --help ({lines} lines)"\n\n{block}\n')
    return "\n".join(parts)


def benchmarks_markdown() -> str:
    """Every ``benchmarks/results/*.md``, headings one level down, figures from images/."""
    files = sorted(
        RESULTS.glob("*.md"),
        key=lambda p: (
            p.stem not in BENCHMARK_ORDER,
            BENCHMARK_ORDER.index(p.stem) if p.stem in BENCHMARK_ORDER else 0,
            p.stem,
        ),
    )
    parts = []
    for file in files:
        text = file.read_text(encoding="utf-8")
        text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)
        text = re.sub(r"\]\(([\w.-]+\.png)\)", r"](images/benchmarks/\1)", text)
        parts.append(f"{text.rstrip()}\n\n*From `benchmarks/results/{file.name}`.*\n")
    return "\n".join(parts)


def on_files(files: Files, config: Any) -> Files:
    """The benchmark figures, which live beside their results, join the site's images."""
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"images/benchmarks/{png.name}", abs_src_path=str(png)))
    return files


# Sphinx cross-reference roles in docstrings (":func:`~moderncnn.save_model`"), as Markdown
# renders them: the role's name is dropped, and "~" keeps the last dotted part, as in Sphinx.
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    return _ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if BENCHMARKS_MARKER in markdown:
        markdown = markdown.replace(BENCHMARKS_MARKER, benchmarks_markdown())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_markdown())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    return markdown
