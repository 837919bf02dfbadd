"""moderncnn vs torchvision and timm on this CPU: inference and training throughput, memory.

Each model is built from the same weights (torchvision's ``state_dict`` loaded into ours and,
when ``timm`` is installed -- ``pip install moderncnn[bench]`` -- into timm's) and timed side by
side: inference at defaults (fp32, NCHW, eval, ``inference_mode``), our
:func:`~moderncnn.inference.optimize_for_inference` path against their defaults, and one SGD
training step: at defaults, channels-last, and channels-last under bf16 autocast (what
``trainer.precision: bf16-mixed`` does on a CPU with bf16 instructions). timm has no GoogLeNet,
and its Inception v3 no auxiliary head (one loss fewer to train). DenseNet-121's peak training
memory compares our ``memory_efficient=True`` with torchvision's default, each measured in a
fresh process, as peak tensor bytes (torch.profiler) and as peak resident memory (VmHWM).

    python benchmarks/models.py            # full run: about 8 minutes on 2 quiet cores (estimate)
    python benchmarks/models.py --quick    # smoke run (batch 2, 1-2 runs): minutes, writes nothing
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from moderncnn import create_model
from moderncnn.inference import optimize_for_inference
from moderncnn.training.run_facts import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "models.md"
# Resolution each model is published at (px).
IMAGE_SIZE = {"resnet50": 224, "densenet121": 224, "googlenet": 224, "inception_v3": 299}
# The goals we hold ourselves to: throughput ratio ours / torchvision (higher is better) and
# memory ratio (lower is better).
GOAL_DEFAULTS, GOAL_OPTIMISED, GOAL_TRAINING, GOAL_MEMORY = 1.0, 1.2, 1.1, 0.6
HAVE_TIMM = importlib.util.find_spec("timm") is not None
# bf16 autocast is fast only where oneDNN has bf16 kernels (AVX512-BF16, AMX); elsewhere slow.
HAVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def calibrate_batch_norms(model: nn.Module, size: int) -> None:
    """Set batch-norm statistics from one random batch, as training would.

    With torchvision's random init and unit running statistics, eval-mode activations are
    far from a trained network's: GoogLeNet's fade into denormal floats (on x86 about 100x
    slower to compute with) and Inception v3's logits reach 1e7. Calibrated, they are not.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics outright
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
    for bn in norms:
        bn.momentum = 0.1


def build_models(name: str, size: int) -> dict[str, nn.Module]:
    """Ours, torchvision's and timm's ``name`` (timm if it has it), with the same weights."""
    kwargs = {"init_weights": True} if name in {"googlenet", "inception_v3"} else {}
    theirs = getattr(torchvision.models, name)(weights=None, **kwargs)
    calibrate_batch_norms(theirs, size)
    models = {"ours": create_model(name), "torchvision": theirs}
    models["ours"].load_state_dict(theirs.state_dict())  # strict: every key and shape agree
    timm_model = build_timm(name, theirs.state_dict())
    if timm_model is not None:
        models["timm"] = timm_model
    return models


def build_timm(name: str, state: dict[str, Tensor]) -> nn.Module | None:
    """timm's ``name`` with torchvision's weights (same key names), or None if there is none."""
    if not HAVE_TIMM:
        return None
    import timm

    if name not in timm.list_models(name):
        return None
    model = timm.create_model(name, pretrained=False)
    result = model.load_state_dict(state, strict=False)
    # timm's Inception v3 has no auxiliary head: only those keys may be left over.
    if result.missing_keys or any(not k.startswith("AuxLogits.") for k in result.unexpected_keys):
        raise RuntimeError(f"timm's {name} does not take torchvision's weights: {result}")
    return model


def timed_rounds(
    steps: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each step; rounds interleave the steps so load drift hits all."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    keys, order = list(steps), random.Random(0)
    for _ in range(repeats):
        # A seeded shuffle each round: a variant timed right after one in another memory
        # format or dtype (oneDNN re-plans, caches go cold) pays for it; a fixed order would
        # make the same variant pay every round.
        order.shuffle(keys)
        for key in keys:
            start = time.perf_counter()
            steps[key]()
            times[key].append(time.perf_counter() - start)
    return times


def bench_inference(name: str, batch: int, size: int, args: argparse.Namespace) -> dict:
    models = {key: model.eval() for key, model in build_models(name, size).items()}
    fast = optimize_for_inference(models["ours"])
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        # same weights, same numbers: otherwise the comparison means nothing
        expected = models["torchvision"](x)
        for key, model in models.items():
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4, msg=key)
        fast_out = fast(x.contiguous(memory_format=torch.channels_last))
        # folding reorders fp32 rounding: compare relative to the logits' scale
        scale = expected.abs().max().item()
        torch.testing.assert_close(fast_out, expected, rtol=1e-3, atol=1e-4 * scale)
        steps = {key: functools.partial(model, x) for key, model in models.items()}
        steps["optimised"] = lambda: fast(x.contiguous(memory_format=torch.channels_last))
        return timed_rounds(steps, args.warmup, args.repeats)


def training_step(
    model: nn.Module, x: Tensor, y: Tensor, channels_last: bool = False, bf16: bool = False
) -> Callable[[], None]:
    """One SGD step; aux heads (GoogLeNet, Inception v3) add 0.3 x their loss (Szegedy 2015).

    ``channels_last``: NHWC weights and images (ImageClassifier's ``channels_last``);
    ``bf16``: forward under bf16 autocast, fp32 weights (Lightning's ``bf16-mixed``).
    """
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    autocast = (
        functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
        if bf16
        else contextlib.nullcontext
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            logits, *aux = out if isinstance(out, tuple) else (out,)
            loss = loss_fn(logits, y) + sum(0.3 * loss_fn(a, y) for a in aux)
        loss.backward()
        optimizer.step()

    return step


def bench_training(name: str, batch: int, size: int, args: argparse.Namespace) -> dict:
    models = build_models(name, size)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    steps = {key: training_step(model, x, y) for key, model in models.items()}
    fast = {"channels_last": {"channels_last": True}}
    if HAVE_BF16:
        fast["bf16"] = {"channels_last": True, "bf16": True}
    for key, switches in fast.items():  # each on a fresh copy of the same weights
        ours = create_model(name)
        ours.load_state_dict(models["torchvision"].state_dict())
        steps[key] = training_step(ours, x, y, **switches)
    return timed_rounds(steps, args.warmup, args.train_repeats)


def _proc_status_mb(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status``, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6  # reported in kB
    raise RuntimeError(f"no {field} in /proc/self/status: memory needs Linux (--skip-memory)")


def peak_tensor_mb(step: Callable[[], None]) -> float:
    """Peak MB of tensors allocated during ``step`` (torch.profiler's CPU memory events).

    Deterministic and blind to the allocator: the CPU analogue of CUDA's
    ``max_memory_allocated``. Counts what ``step`` allocates, not what existed before.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    allocated = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(allocated) / 1e6


def peak_rss_mb(step: Callable[[], None]) -> float:
    """Growth of this process's resident memory at its peak during ``step``, in MB.

    The kernel's high-water mark (``VmHWM``), reset just before the step. Includes what
    the allocator holds beyond live tensors, so it varies from run to run. Not
    ``getrusage().ru_maxrss``: after ``exec`` that keeps the parent's peak when larger.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    resident = _proc_status_mb("VmRSS")
    step()
    return _proc_status_mb("VmHWM") - resident


MEMORY_MEASURES = {"tensors": peak_tensor_mb, "rss": peak_rss_mb}


def memory_worker(which: str, measure: str, batch: int, size: int) -> None:
    """Runs in a fresh process: print the memory (MB) of one DenseNet-121 training step."""
    if which == "ours":
        model = create_model("densenet121", memory_efficient=True)
    else:
        model = torchvision.models.densenet121(weights=None)
    model.train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    mb = MEMORY_MEASURES[measure](lambda: nn.functional.cross_entropy(model(x), y).backward())
    print(json.dumps({"mb": mb}))


def bench_memory(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """``{measure: {"ours" | "torchvision": [MB per process]}}``, one fresh process each."""
    results = {m: {"ours": [], "torchvision": []} for m in MEMORY_MEASURES}
    for _ in range(args.memory_repeats):
        for measure, by_model in results.items():
            for which in by_model:
                cmd = [sys.executable, __file__, "--memory-worker", which, "--measure", measure]
                cmd += ["--memory-batch", str(args.memory_batch), "--threads", str(args.threads)]
                cmd += ["--image-size", str(args.image_size or 224)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                by_model[which].append(json.loads(out.strip().splitlines()[-1])["mb"])
    return results


def memory_rows(args: argparse.Namespace) -> list[str]:
    size, mem = args.image_size or 224, bench_memory(args)
    lines = [
        "",
        "## DenseNet-121 training memory (MB, lower is better)",
        "",
        f"One forward + backward at batch {args.memory_batch}, {size} px, each measurement in "
        f"a fresh process, median of {args.memory_repeats} processes. *Tensors*: the peak of "
        "the bytes of tensors allocated during the step (activations, gradients, workspaces), "
        "from `torch.profiler`'s memory events -- deterministic, the CPU analogue of "
        "`torch.cuda.max_memory_allocated`. *Resident*: the peak growth of the process's "
        "resident memory (`VmHWM` of `/proc/self/status`, reset through `/proc/self/clear_refs`, "
        "minus `VmRSS` before the step) -- what the OS sees, allocator caching included, "
        "so noisier.",
        "",
        "| measure | ours (memory_efficient=True) | torchvision (default) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for measure, label in (("tensors", "tensors, peak"), ("rss", "resident, peak growth")):
        ours, theirs = (statistics.median(mem[measure][k]) for k in ("ours", "torchvision"))
        ratio = ours / theirs
        lines.append(
            f"| {label} | {ours:.0f} {spread(mem[measure]['ours'])} | {theirs:.0f} "
            f"{spread(mem[measure]['torchvision'])} | {ratio:.2f}x | <= {GOAL_MEMORY:.1f}x "
            f"| {'yes' if ratio <= GOAL_MEMORY else 'no'} |"
        )
    return lines


def spread(values: list[float]) -> str:
    """Half the interquartile range relative to the median: how noisy a median is."""
    mid = statistics.median(values)
    if len(values) < 2 or not mid:
        return ""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"±{(q3 - q1) / 2 / mid:.0%}"


def machine_info(args: argparse.Namespace) -> list[str]:
    cpu = cpu_name()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}"
        f" (`torch.set_num_threads({args.threads})`, `--threads`)",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}",
        f"- load average (1 min) at start: {os.getloadavg()[0]:.2f}",
    ]


# (row, benchmark, our variant, goal: ratio to torchvision at its defaults)
TASKS = [
    ("inference, defaults", "inference", "ours", GOAL_DEFAULTS),
    ("inference, optimize_for_inference", "inference", "optimised", GOAL_OPTIMISED),
    ("training step, defaults", "training", "ours", GOAL_DEFAULTS),
    ("training step, channels-last", "training", "channels_last", GOAL_TRAINING),
    ("training step, channels-last + bf16 autocast", "training", "bf16", GOAL_TRAINING),
]


def throughput_rows(name: str, size: int, args: argparse.Namespace) -> list[str]:
    times = {
        "inference": bench_inference(name, args.batch, size, args),
        "training": bench_training(name, args.train_batch, size, args),
    }
    rows = []
    for task, bench, key, goal in TASKS:
        runs = times[bench]
        if key not in runs:  # bf16 without bf16 kernels on this CPU
            continue
        batch = args.batch if bench == "inference" else args.train_batch
        speed = {k: batch / statistics.median(v) for k, v in runs.items()}
        ratio = speed[key] / speed["torchvision"]
        timm_cells = "| — | — "
        if "timm" in speed:
            timm_cells = f"| {speed['timm']:.1f} {spread(runs['timm'])} "
            timm_cells += f"| {speed[key] / speed['timm']:.2f}x "
        rows.append(
            f"| {name} | {task} | {batch} | {size} | {speed[key]:.1f} {spread(runs[key])} "
            f"| {speed['torchvision']:.1f} {spread(runs['torchvision'])} | {ratio:.2f}x "
            f"{timm_cells}| >= {goal:.1f}x | {'yes' if ratio >= goal else 'no'} |"
        )
        print(rows[-1], flush=True)
    return rows


def report(args: argparse.Namespace) -> str:
    lines = ["# moderncnn vs torchvision and timm on CPU", ""]
    if args.quick:
        lines += ["**Quick smoke run: tiny batches, too few runs to read anything into.**", ""]
    lines += [*machine_info(args), ""]
    timm_note = (
        f"timm {importlib.metadata.version('timm')} (same weights, checked)"
        if HAVE_TIMM
        else "timm: not installed (`pip install moderncnn[bench]`), its columns show —"
    )
    lines += [
        "## Throughput (images/s, higher is better)",
        "",
        f"Median of {args.repeats} timed runs (training: {args.train_repeats}) after "
        f"{args.warmup} warm-up runs, the variants interleaved round by round, in a "
        "seeded random order each round, so that load changes and order effects hit them alike; "
        "± is half the interquartile range (a ratio within it is "
        "noise). Same weights in all (checked: "
        "equal logits): torchvision's random init with batch-norm statistics calibrated on "
        "one random batch, so that eval-mode activations have a trained network's scale "
        "(uncalibrated, GoogLeNet's fade into slow denormal floats). torchvision and timm "
        "always run at their defaults: fp32, NCHW; inference in eval mode under "
        "`torch.inference_mode`. Ours, optimised inference: "
        "`optimize_for_inference` (batch norm folded into convs, channels-last weights; the "
        "input conversion to channels-last is timed). Training: forward, cross-entropy (+0.3 x "
        "aux losses; timm's Inception v3 has no aux head), backward and an SGD step; ours at "
        "defaults, channels-last (`model.channels_last: true`, the same fp32 arithmetic), and "
        "channels-last under bf16 autocast with fp32 weights (`trainer.precision: bf16-mixed`: "
        "mixed precision, so not the same arithmetic; shown only where oneDNN has bf16 "
        f"kernels, here: {'yes' if HAVE_BF16 else 'no'}). {timm_note}. Ratios: ours / "
        "torchvision (the goal) and ours / timm.",
        "",
        "| model | task | batch | px | ours | torchvision | ours/tv | timm | ours/timm "
        "| goal | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models:
        lines += throughput_rows(name, args.image_size or IMAGE_SIZE[name], args)
    if not args.skip_memory:
        rows = memory_rows(args)
        lines += rows
        print("\n".join(rows), flush=True)
    lines += ["", f"- load average (1 min) at end: {os.getloadavg()[0]:.2f}", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(IMAGE_SIZE), choices=list(IMAGE_SIZE))
    parser.add_argument("--batch", type=int, default=16, help="inference batch size")
    parser.add_argument("--train-batch", type=int, default=8, help="training batch size")
    # Inception v3's aux head needs >= 299 px in training (a 17 x 17 map before its 5x5 pool).
    parser.add_argument("--image-size", type=int, help="px for every model (default: published)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant")
    parser.add_argument("--repeats", type=int, default=7, help="timed inference runs")
    parser.add_argument("--train-repeats", type=int, default=9, help="timed training steps")
    parser.add_argument("--memory-batch", type=int, default=8, help="DenseNet memory batch")
    parser.add_argument("--memory-repeats", type=int, default=3, help="processes per variant")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
    parser.add_argument("--output", type=Path, help=f"markdown report (default {RESULTS})")
    parser.add_argument("--memory-worker", choices=["ours", "torchvision"], help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=list(MEMORY_MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.train_batch, args.memory_batch = 2, 2, 2
        args.warmup, args.repeats, args.train_repeats, args.memory_repeats = 1, 2, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_worker:
        memory_worker(args.memory_worker, args.measure, args.memory_batch, args.image_size or 224)
        return 0
    text = report(args)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
