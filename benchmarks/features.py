"""Feature extraction from image files: our cache vs the course notes' Python lists.

Both sides run the same DenseNet-121 conv base, with the same weights, over the same image
folder, with the same per-image transform (Resize 224 + ToTensor + Normalize):

- *Seeds* (the course notes' way): torchvision's ``ImageFolder`` decodes one PIL image at a
  time, a ``DataLoader(batch_size=8)`` batches them, torchvision's ``densenet121().features``
  runs under ``torch.no_grad``, and every 1024 x 7 x 7 map is flattened into Python lists with
  ``features.extend(out.flatten(1).tolist())``; their cache is ``np.save`` of
  ``np.array(features)``. Such a cache has no key: a rerun runs the backbone again.
- *Ours*: ``moderncnn.transfer.extract_features("densenet121", folder, cache, weights=...)``,
  pooled 1024-wide float32 vectors in a verified safetensors cache; a rerun with the same
  backbone, weights, transform and files loads it without running the backbone. Its batch is
  the library's default (8 images on a CPU at 128 px or more, else 64) unless ``--batch``.
- *Ours, bf16 autocast*: the same call with the opt-in ``bf16=True`` (``--bf16``): bfloat16
  compute, float32 features. Measured only where it can pay off -- a CPU with bfloat16 units
  (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``) or a CUDA device; without them
  autocast emulates bfloat16 and is slower than float32. Its features are checked against the
  seeds' with a looser tolerance (:data:`BF16_TOLERANCE`).

Each measurement runs in a fresh process, so its peak resident memory is its own. The images
are real: Fashion-MNIST test images written as PNG files into class folders. The weights are
torchvision's random init with batch-norm statistics calibrated on one batch (no ImageNet
download here); the throughput does not depend on the weights' values.

    python benchmarks/features.py            # full run: about 4 minutes on 2 quiet cores
    python benchmarks/features.py --quick    # smoke run (16 images at 64 px): writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from moderncnn.training.run_facts import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "features.md"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Goals, ours against the seeds (higher is better): extraction images/s, cache bytes (seeds /
# ours), and a rerun (the seeds' rerun extracts again / ours loads the cache).
GOAL_SPEED, GOAL_SIZE, GOAL_RERUN = 3.0, 40.0, 50.0
# Largest per-image relative difference ||ours - seeds|| / ||seeds|| of pooled features that
# bfloat16 compute may make (an 8-bit mantissa: ~0.4% per rounding, accumulated over 120 convs).
BF16_TOLERANCE = 0.05
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as the notes use


def seeds_transform(size: int) -> torchvision.transforms.Compose:
    """The notes' per-image transform (torchvision v1 API), used by both sides."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )


def write_image_folder(root: Path, count: int) -> None:
    """The first ``count`` Fashion-MNIST test images as PNGs in one folder per class."""
    from PIL import Image

    from moderncnn.data.fashion_mnist import CLASS_NAMES
    from moderncnn.data.idx import read_idx

    images = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")[:count]
    labels = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")[:count]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASS_NAMES[label].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def write_weights(path: Path, size: int) -> None:
    """torchvision's random-init DenseNet-121 with batch-norm statistics set from one batch.

    With unit running statistics an untrained network's eval-mode activations shrink layer
    by layer towards denormal floats (slow on x86); calibrated, they have a trained one's scale.
    """
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch sets the statistics outright
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
    torch.save(model.state_dict(), path)


# --- the measured paths, each run by ``--worker NAME`` in a fresh process ------------------


def run_seeds(args: argparse.Namespace) -> dict:
    """The notes' extraction: PIL per image, batch 8, flattened maps into Python lists."""
    from torch.utils.data import DataLoader
    from torchvision import datasets

    start_mb, start = _reset_peak(), time.perf_counter()
    model = torchvision.models.densenet121(weights=None)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    conv_base = model.features.to(args.device).eval()
    dataset = datasets.ImageFolder(str(args.images_dir), transform=seeds_transform(args.image_size))
    loader = DataLoader(dataset, batch_size=8)
    features, labels = [], []
    with torch.no_grad():
        for inputs, targets in loader:
            out = conv_base(inputs.to(args.device))
            features.extend(out.flatten(1).tolist())
            labels.extend(targets.tolist())
    args.cache.mkdir(parents=True, exist_ok=True)
    np.save(args.cache / "features.npy", np.array(features))  # float64, as np.array makes it
    np.save(args.cache / "labels.npy", np.array(labels))
    result = _result(start, start_mb, images=len(labels), width=len(features[0]))
    # Untimed, after the peak is read: what pickling the lists instead would store.
    result["pickle_bytes"] = len(pickle.dumps((features, labels), pickle.HIGHEST_PROTOCOL))
    return result


def run_seeds_load(args: argparse.Namespace) -> dict:
    """The notes' "cache": loading the saved array back (nothing checks that it is current)."""
    start_mb, start = _reset_peak(), time.perf_counter()
    features = np.load(args.cache / "features.npy")
    np.load(args.cache / "labels.npy")
    return _result(start, start_mb, images=len(features))


def run_ours(args: argparse.Namespace) -> dict:
    """Our extraction to the cache folder; on a rerun, the cache hit.

    Worker ``ours-bf16`` runs it with the opt-in ``bf16=True``.
    """
    from moderncnn.transfer.features import extract_features

    manifest = args.cache / "manifest.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    start_mb, start = _reset_peak(), time.perf_counter()
    cache = extract_features(
        "densenet121",
        args.images_dir,
        args.cache,
        weights=str(args.weights),
        transform=seeds_transform(args.image_size),
        device=args.device,
        progress=False,
        bf16=args.worker == "ours-bf16",
        **({} if args.batch is None else {"batch_size": args.batch}),
    )
    features = cache.features("all")  # what a rerun is for: the features in memory
    result = _result(start, start_mb, images=len(features), width=features.shape[1])
    result["cache_hit"] = before is not None and manifest.stat().st_mtime_ns == before
    return result


def _reset_peak() -> float:
    """Resets this process's peak resident memory to the current one and returns it (MB).

    Called after the imports, so the peaks compare the work, not torch's shared libraries.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to VmRSS (Linux >= 4.0)
    return _proc_status_mb("VmRSS")


def _result(start: float, start_mb: float, **extra: int) -> dict:
    """Seconds since ``start``, peak resident MB, and the peak above ``start_mb``."""
    seconds = time.perf_counter() - start
    peak = _proc_status_mb("VmHWM")
    return {"seconds": seconds, "peak_mb": peak, "growth_mb": peak - start_mb, **extra}


WORKERS = {
    "seeds": run_seeds,
    "seeds-load": run_seeds_load,
    "ours": run_ours,
    "ours-bf16": run_ours,
}


def _proc_status_mb(field: str) -> float:
    """A ``VmHWM`` (peak) / ``VmRSS`` line of ``/proc/self/status``, in MB.

    Not ``getrusage().ru_maxrss``: it cannot be reset, and after ``exec`` it keeps the
    parent's peak when larger.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6  # reported in kB
    raise RuntimeError(f"no {field} in /proc/self/status: peak memory needs Linux")


def in_fresh_process(worker: str, cache: Path, args: argparse.Namespace) -> dict:
    """Runs ``worker`` in a new Python process and returns the JSON it prints."""
    cmd = [sys.executable, __file__, "--worker", worker, "--cache", str(cache)]
    cmd += ["--images-dir", str(args.images_dir), "--weights", str(args.weights)]
    cmd += ["--image-size", str(args.image_size), "--threads", str(args.threads)]
    cmd += ["--device", str(args.device)]
    if args.batch is not None:
        cmd += ["--batch", str(args.batch)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {worker!r} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_same_features(seeds_cache: Path, ours_cache: Path, bf16: bool = False) -> float:
    """Ours must be the seeds' maps after DenseNet's final ReLU and global average pool.

    torchvision's ``features`` ends at ``norm5``; its ``forward`` (and our ``forward_head``)
    applies the ReLU and the pooling, so that is what a pooled feature is. Returns the largest
    per-image relative difference ``||ours - seeds|| / ||seeds||``; bf16 may reach
    :data:`BF16_TOLERANCE`.
    """
    from moderncnn.transfer.cache import FeatureCache

    cache = FeatureCache(ours_cache)
    maps = torch.from_numpy(np.load(seeds_cache / "features.npy")).float()
    expected = maps.view(len(maps), cache.num_features, -1).relu().mean(2)
    ours = cache.features("all")
    worst = ((ours - expected).norm(dim=1) / expected.norm(dim=1).clamp(min=1e-30)).max().item()
    if bf16 and not worst <= BF16_TOLERANCE:
        raise AssertionError(
            f"{ours_cache}: bf16 features differ from the seeds' by {worst:.1%} (worst image, "
            f"relative), more than the {BF16_TOLERANCE:.0%} allowed"
        )
    if not bf16:  # batch-norm folding reorders float32 rounding: a relative tolerance
        scale = expected.abs().max().item()
        torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-3 * scale)
    labels = torch.from_numpy(np.load(seeds_cache / "labels.npy"))
    torch.testing.assert_close(cache.labels("all"), labels)
    return worst


def bf16_units(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and the evidence (or why not).

    Without bf16 units CPU autocast emulates bfloat16 and runs slower than float32, so the
    opt-in is measured only where a user would turn it on.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA device {name} computes bfloat16"
        return False, f"CUDA device {name} has no bfloat16 support"
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if found:
        return True, "CPU flags " + ", ".join(f"`{flag}`" for flag in found)
    return False, f"no {' / '.join(f'`{f}`' for f in BF16_CPU_FLAGS)} in `/proc/cpuinfo` flags"


def measure(args: argparse.Namespace, work: Path) -> dict[str, list[dict]]:
    """Every path ``args.repeats`` times, interleaved so that load drift hits them alike."""
    ours_paths = ["ours", "ours-bf16"] if args.bf16_ok else ["ours"]
    runs: dict[str, list[dict]] = {"seeds": [], "seeds-load": []}
    for path in ours_paths:
        runs[path], runs[f"{path}-rerun"] = [], []
    for i in range(args.repeats):
        seeds_cache = work / f"seeds-{i}"
        runs["seeds"].append(in_fresh_process("seeds", seeds_cache, args))
        runs["seeds"][-1]["cache_bytes"] = folder_bytes(seeds_cache)
        runs["seeds-load"].append(in_fresh_process("seeds-load", seeds_cache, args))
        for path in ours_paths:
            cache = work / f"{path}-{i}"
            first, rerun = in_fresh_process(path, cache, args), in_fresh_process(path, cache, args)
            if first["cache_hit"] or not rerun["cache_hit"]:
                raise AssertionError(f"{path} run {i}: the first run must extract, the rerun hit")
            first["cache_bytes"] = folder_bytes(cache)
            first["max_rel_diff"] = check_same_features(seeds_cache, cache, path == "ours-bf16")
            runs[path].append(first)
            runs[f"{path}-rerun"].append(rerun)
        print(f"round {i + 1}/{args.repeats}: " + json.dumps(runs), flush=True)
        shutil.rmtree(seeds_cache)  # a few hundred MB each
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def spread(values: list[float]) -> str:
    """Half the min-max range relative to the median: how noisy a median is."""
    mid = statistics.median(values)
    if len(values) < 2 or not mid:
        return ""
    return f" ±{(max(values) - min(values)) / 2 / mid:.0%}"


# Row labels of the table; the goals of the rows that have one.
ROWS = [
    "extraction, images/s (files -> cache on disk)",
    "extraction, peak resident MB above start (whole process)",
    "cache size, MB",
    "rerun, s (seeds: extract again; ours: cache hit)",
    "rerun vs the same path's first run, s",
    "rerun, peak resident MB above start (whole process)",
]
GOALS = {0: GOAL_SPEED, 2: GOAL_SIZE, 3: GOAL_RERUN}
PATH_NAMES = {
    "ours": "ours (float32, the default)",
    "ours-bf16": "ours, bf16 autocast (opt-in `bf16=True` / `--bf16`)",
}


def _memory(runs: list[dict]) -> str:
    """Median growth above start (median whole-process peak), MB."""
    return f"{median(runs, 'growth_mb'):,.0f} ({median(runs, 'peak_mb'):,.0f})"


def seeds_cells(runs: dict[str, list[dict]]) -> list[str]:
    """The seeds' cell of each row of :data:`ROWS`."""
    n, seeds_s = runs["seeds"][0]["images"], median(runs["seeds"], "seconds")
    seeds_b = runs["seeds"][0]["cache_bytes"]
    return [
        f"{n / seeds_s:.1f}{spread([n / run['seconds'] for run in runs['seeds']])}",
        _memory(runs["seeds"]),
        f"{seeds_b / 1e6:,.1f} ({seeds_b / n / 1e3:,.0f} kB/image)",
        f"{seeds_s:.2f}",
        "",
        _memory(runs["seeds"]),
    ]


def path_cells(runs: dict[str, list[dict]], path: str) -> list[tuple[str, float]]:
    """One of our paths' (cell, ratio: how many times better than the seeds) per row."""
    first, rerun = runs[path], runs[f"{path}-rerun"]
    n, seeds_s = runs["seeds"][0]["images"], median(runs["seeds"], "seconds")
    ours_s, rerun_s = median(first, "seconds"), median(rerun, "seconds")
    seeds_mb, ours_b = median(runs["seeds"], "growth_mb"), first[0]["cache_bytes"]
    return [
        (f"{n / ours_s:.1f}{spread([n / run['seconds'] for run in first])}", seeds_s / ours_s),
        (_memory(first), seeds_mb / median(first, "growth_mb")),
        (
            f"{ours_b / 1e6:,.2f} ({ours_b / n / 1e3:,.1f} kB/image)",
            runs["seeds"][0]["cache_bytes"] / ours_b,
        ),
        (f"{rerun_s:.2f}{spread([run['seconds'] for run in rerun])}", seeds_s / rerun_s),
        (f"{rerun_s:.2f} (first: {ours_s:.2f})", ours_s / rerun_s),
        (_memory(rerun), seeds_mb / median(rerun, "growth_mb")),
    ]


def results_table(runs: dict[str, list[dict]], paths: list[str]) -> list[str]:
    """One column pair (value, ratio vs the seeds) and one "met" column per path of ours."""
    cells = {path: path_cells(runs, path) for path in paths}
    short = {"ours": "ours", "ours-bf16": "ours bf16"}
    head = ["measure", "seeds"]
    for path in paths:
        head += [PATH_NAMES[path], f"{short[path]} better by"]
    head += ["goal"] + [f"met: {short[path]}" for path in paths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (label, seeds) in enumerate(zip(ROWS, seeds_cells(runs), strict=True)):
        row = [label, seeds]
        for path in paths:
            text, ratio = cells[path][i]
            row += [text, f"{ratio:,.1f}x"]
        goal = GOALS.get(i)
        row.append("" if goal is None else f">= {goal:.0f}x")
        for path in paths:
            row.append("" if goal is None else ("yes" if cells[path][i][1] >= goal else "no"))
        lines.append("| " + " | ".join(row) + " |")
    load = [
        "seeds: `np.load` of their array (unchecked), s",
        f"{median(runs['seeds-load'], 'seconds'):.2f}",
    ]
    lines.append("| " + " | ".join(load + [""] * (len(head) - 2)) + " |")
    return lines


def goals_summary(runs: dict[str, list[dict]], paths: list[str]) -> list[str]:
    """A line per path of ours: which goals it meets, and how far its features are from the
    seeds'."""
    what = {0: "faster extraction", 2: "smaller cache", 3: "faster rerun"}
    lines = []
    for path in paths:
        cells = path_cells(runs, path)
        verdicts = [
            f"{what[i]} >= {goal:.0f}x: {'met' if cells[i][1] >= goal else 'NOT met'} "
            f"({cells[i][1]:,.1f}x)"
            for i, goal in GOALS.items()
        ]
        worst = max(run["max_rel_diff"] for run in runs[path])
        lines.append(
            f"- **{PATH_NAMES[path]}**: " + "; ".join(verdicts) + f". Features vs the seeds': "
            f"largest per-image relative difference {worst * 100:.2g}%"
            + (f" (allowed: {BF16_TOLERANCE:.0%})." if path == "ours-bf16" else ".")
        )
    return lines


def machine_info(args: argparse.Namespace) -> list[str]:
    cpu = cpu_name()
    device = str(args.device)
    if args.device.type == "cuda":
        device = f"{device} ({torch.cuda.get_device_name(args.device)})"
    load, cores = args.load_at_start, os.cpu_count() or 1
    lines = [
        f"- date: {args.started.isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {cores} logical cores; torch threads: {args.threads} (`--threads`)",
        f"- backbone device: {device}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}",
        f"- load average (1 min) at start: {load:.2f}",
        f"- bfloat16 units: {'yes' if args.bf16_ok else 'no'} ({args.bf16_why})",
    ]
    if load >= cores:
        lines.append(
            f"- **the machine was busy (load {load:.1f} on {cores} cores): the figures are noisy "
            "and lower than on a quiet machine; re-run there before quoting them**"
        )
    return lines


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    n, size = runs["seeds"][0]["images"], args.image_size
    seeds_pickle = runs["seeds"][0]["pickle_bytes"]
    paths = ["ours", "ours-bf16"] if args.bf16_ok else ["ours"]
    batch_text = "" if args.batch is None else f", batch_size={args.batch}"
    if args.bf16_ok:
        bf16_text = [
            f"*{PATH_NAMES['ours-bf16']}*: the same call with `bf16=True` -- bfloat16 autocast "
            f"compute ({args.bf16_why}), float32 features, its own cache key. Its features are "
            "checked with a looser tolerance: per image, `||ours - seeds|| / ||seeds||` at most "
            f"{BF16_TOLERANCE:.0%} (float32: the elementwise 0.1% check). It is opt-in; the "
            "default, float32, is the headline *ours*."
        ]
    else:
        bf16_text = [f"*bf16 autocast column skipped*: {args.bf16_skip}"]
    lines = ["# Feature extraction: our cache vs the course notes' Python lists", ""]
    if args.quick:
        lines += ["**Quick smoke run: a handful of small images, nothing to read into.**", ""]
    lines += [*machine_info(args), ""]
    lines += [
        f"{n} Fashion-MNIST test images (28 x 28 PNG files in class folders), resized to "
        f"{size} px, through a DenseNet-121 conv base with the same weights on both sides "
        "(torchvision's random init, batch-norm statistics calibrated on one random batch: "
        "ImageNet weights cannot be downloaded here, and the timings do not depend on the "
        "values). Same transform on both sides: the notes' `Resize` + `ToTensor` + "
        "`Normalize` (passed to ours as `transform=`). Checked in every round: our features "
        "equal the seeds' maps after DenseNet's final ReLU and global average pool, labels "
        "in the same order.",
        "",
        f"Median of {args.repeats} round(s); each figure is from a fresh Python process "
        "(timed from building the model to the cache on disk, imports excluded); ± is half "
        "the min-max range. *Seeds*: torchvision `ImageFolder` (one PIL image per sample), "
        "`DataLoader(batch_size=8)`, `densenet121().features` under `torch.no_grad`, "
        "`features.extend(out.flatten(1).tolist())` "
        f"({runs['seeds'][0]['width']:,} floats per image), "
        "then `np.save(np.array(features))` -- float64, which is what `np.array` makes of "
        "Python floats; pickling the lists instead would take "
        f'{seeds_pickle / 1e6:,.1f} MB. *Ours*: `extract_features("densenet121", folder, '
        f"cache, weights=file{batch_text})` ({our_batch(args)} images per batch): pooled "
        "float32 vectors in safetensors, with a JSON manifest (key, SHA-256 of each file) and "
        "file lists. "
        "*Rerun*: the seeds' cache has no key saying which backbone, weights, transform and "
        "files made it, so a rerun extracts again (their `np.load` of the array, unchecked, "
        "is shown for reference); ours re-checks the key and the files' hashes, builds the "
        "backbone to hash its weights, and loads the features. Peak resident memory: the "
        "kernel's high-water mark (`VmHWM`) above the resident memory after the imports "
        "(reset there through `/proc/self/clear_refs`); in brackets the whole process's peak, "
        "torch's libraries included.",
        "",
        *bf16_text,
        "",
        *results_table(runs, paths),
        "",
        "Goals (ours against the seeds) per path:",
        "",
        *goals_summary(runs, paths),
        "",
        "Memory grows with the number of images on the seeds' side only: their lists hold "
        f"{runs['seeds'][0]['width'] * 32 / 1e6:.1f} MB per image (a 24-byte Python float and "
        "an 8-byte list slot per value), and `np.array` copies them once more; ours holds "
        f"one batch ({our_batch(args)} images) of backbone activations plus "
        f"{runs['ours'][0]['width'] * 4 / 1e3:.1f} kB per image"
        + (
            ", so at a few hundred images the larger batch can cost it more than the seeds' "
            "lists do."
            if our_batch(args) > 8
            else "."
        ),
        "",
        f"- load average (1 min) at end: {os.getloadavg()[0]:.2f}",
        "",
    ]
    return "\n".join(lines)


def our_batch(args: argparse.Namespace) -> int:
    """``--batch``, else the batch ``extract_features(batch_size=None)`` resolves for this run.

    The library's rule for ``batch_size=None``: 8 images on a CPU at 128 px or more (a
    DenseNet's concatenated maps for 64 images at 224 px overflow the CPU's caches), else 64.
    The workers pass no ``batch_size`` then, so the library's own rule is what runs.
    """
    if args.batch is not None:
        return args.batch
    return 8 if args.device.type == "cpu" and args.image_size >= 128 else 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="Fashion-MNIST test images")
    parser.add_argument("--image-size", type=int, default=224, help="px the backbone sees")
    parser.add_argument("--batch", type=int, help="our batch size (default: extract_features')")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of fresh processes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--device", type=torch.device, default=None, help="default: cuda if any")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
    parser.add_argument("--output", type=Path, help=f"markdown report (default {RESULTS})")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.images, args.image_size, args.repeats = 16, 64, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"Fashion-MNIST not found in {FASHION_MNIST}: apt-get install dataset-fashion-mnist")
        return 1
    args.started = datetime.datetime.now().astimezone()
    args.load_at_start = os.getloadavg()[0]
    args.bf16_ok, args.bf16_why = bf16_units(args.device)
    args.bf16_skip = (
        f"{args.bf16_why}: bfloat16 autocast would be emulated there and run slower than float32, "
        "so the opt-in `bf16=True` is not measured on this machine"
    )
    if not args.bf16_ok:
        print(f"bf16 autocast row skipped: {args.bf16_skip}", flush=True)
    with tempfile.TemporaryDirectory(prefix="moderncnn-features-") as tmp:
        work = Path(tmp)
        args.images_dir, args.weights = work / "images", work / "densenet121.pth"
        write_image_folder(args.images_dir, args.images)
        write_weights(args.weights, args.image_size)
        runs = measure(args, work)
    text = report(args, runs)
    print(text)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
