"""moderncnn vs torchvision on this CPU: inference and training throughput, DenseNet memory.

Each model is built twice from the same weights (torchvision's ``state_dict`` loaded into
ours) and timed side by side: inference at defaults (fp32, NCHW, eval, ``inference_mode``),
our :func:`~moderncnn.inference.optimize_for_inference` path against torchvision's defaults,
and one SGD training step. DenseNet-121's peak training memory compares our
``memory_efficient=True`` with torchvision's default, each measured in a fresh process,
as peak tensor bytes (torch.profiler) and as peak resident memory (the kernel's VmHWM).

    python benchmarks/models.py            # full run: about 10 minutes on 2 quiet cores
    python benchmarks/models.py --quick    # smoke run (batch 2, 1-2 runs): ~1 min, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

RESULTS = Path(__file__).resolve().parent / "results" / "models.md"
# Resolution each model is published at (px).
IMAGE_SIZE = {"resnet50": 224, "densenet121": 224, "googlenet": 224, "inception_v3": 299}
# The goals we hold ourselves to: throughput ratio ours / torchvision (higher is better) and
# memory ratio (lower is better).
GOAL_DEFAULTS, GOAL_OPTIMISED, GOAL_MEMORY = 1.0, 1.2, 0.6


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


def build_pair(name: str, size: int) -> tuple[nn.Module, nn.Module]:
    """Ours and torchvision's ``name`` holding the same (batch-norm calibrated) weights."""
    kwargs = {"init_weights": True} if name in {"googlenet", "inception_v3"} else {}
    theirs = getattr(torchvision.models, name)(weights=None, **kwargs)
    calibrate_batch_norms(theirs, size)
    ours = create_model(name)
    ours.load_state_dict(theirs.state_dict())  # strict: every key and shape must agree
    return ours, theirs


def timed_rounds(
    steps: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each step; rounds interleave the steps so load drift hits all."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    return times


def bench_inference(name: str, batch: int, size: int, args: argparse.Namespace) -> dict:
    ours, theirs = build_pair(name, size)
    ours.eval()
    theirs.eval()
    fast = optimize_for_inference(ours)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        # same weights, same numbers: otherwise the comparison means nothing
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)
        fast_out = fast(x.contiguous(memory_format=torch.channels_last))
        # folding reorders fp32 rounding: compare relative to the logits' scale
        scale = expected.abs().max().item()
        torch.testing.assert_close(fast_out, expected, rtol=1e-3, atol=1e-4 * scale)
        steps = {
            "ours": lambda: ours(x),
            "optimised": lambda: fast(x.contiguous(memory_format=torch.channels_last)),
            "torchvision": lambda: theirs(x),
        }
        return timed_rounds(steps, args.warmup, args.repeats)


def training_step(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One SGD step; aux heads (GoogLeNet, Inception v3) add 0.3 x their loss (Szegedy 2015)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        logits, *aux = out if isinstance(out, tuple) else (out,)
        loss = loss_fn(logits, y) + sum(0.3 * loss_fn(a, y) for a in aux)
        loss.backward()
        optimizer.step()

    return step


def bench_training(name: str, batch: int, size: int, args: argparse.Namespace) -> dict:
    ours, theirs = build_pair(name, size)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    steps = {"ours": training_step(ours, x, y), "torchvision": training_step(theirs, x, y)}
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
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}"
        f" (`torch.set_num_threads({args.threads})`, `--threads`)",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}",
        f"- load average (1 min) at start: {os.getloadavg()[0]:.2f}",
    ]


def throughput_rows(name: str, size: int, args: argparse.Namespace) -> list[str]:
    inf = bench_inference(name, args.batch, size, args)
    train = bench_training(name, args.train_batch, size, args)
    rows = []
    for task, times, key, goal, batch in (
        ("inference, defaults", inf, "ours", GOAL_DEFAULTS, args.batch),
        ("inference, optimize_for_inference", inf, "optimised", GOAL_OPTIMISED, args.batch),
        ("training step, defaults", train, "ours", GOAL_DEFAULTS, args.train_batch),
    ):
        ours, theirs = (batch / statistics.median(times[k]) for k in (key, "torchvision"))
        ratio = ours / theirs
        rows.append(
            f"| {name} | {task} | {batch} | {size} | {ours:.1f} {spread(times[key])} "
            f"| {theirs:.1f} {spread(times['torchvision'])} | {ratio:.2f}x | >= {goal:.1f}x "
            f"| {'yes' if ratio >= goal else 'no'} |"
        )
        print(rows[-1], flush=True)
    return rows


def report(args: argparse.Namespace) -> str:
    lines = ["# moderncnn vs torchvision on CPU", ""]
    if args.quick:
        lines += ["**Quick smoke run: tiny batches, too few runs to read anything into.**", ""]
    lines += [*machine_info(args), ""]
    lines += [
        "## Throughput (images/s, higher is better)",
        "",
        f"Median of {args.repeats} timed runs (training: {args.train_repeats}) after "
        f"{args.warmup} warm-up runs, the variants interleaved round by round so that load "
        "changes hit them alike; ± is half the interquartile range (a ratio within it is "
        "noise). Same weights in both (checked: "
        "equal logits): torchvision's random init with batch-norm statistics calibrated on "
        "one random batch, so that eval-mode activations have a trained network's scale "
        "(uncalibrated, GoogLeNet's fade into slow denormal floats). Defaults: fp32, NCHW, "
        "eval mode under `torch.inference_mode`. Optimised: "
        "`optimize_for_inference` (batch norm folded into convs, channels-last weights; the "
        "input conversion to channels-last is timed). Training: forward, cross-entropy (+0.3 x "
        "aux losses), backward and an SGD step.",
        "",
        "| model | task | batch | px | ours | torchvision | ratio | goal | met |",
        "|---|---|---|---|---|---|---|---|---|",
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
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per variant")
    parser.add_argument("--repeats", type=int, default=10, help="timed inference runs")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps")
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
