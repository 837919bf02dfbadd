"""Inference runtimes on this CPU: torchvision eager fp32 against ours on every runtime and
precision, with ONNX Runtime and OpenVINO called directly on the same ONNX file as the peers.

Per model (ResNet-50, DenseNet-121, GoogLeNet at 224 px, Inception v3 at 299 px) and batch
(1, 16): images/s, the ratio to torchvision, GFLOP/s and its fraction of a same-run fp32 GEMM
peak (``torch.mm`` 2048², all threads), interleaved over several rounds (median), threads
pinned to one number for every runtime. Numbers on real images: the 20 CIFAR-10 samples in
``../shared/data``, resized; the weights are random with batch-norm statistics measured on
those images. fp32 rows give max |Δlogit| against torchvision; int8 (ResNet-50) gives top-1
agreement with fp32 and, with ``--quickstart CKPT``, the accuracy of the quickstart model's
int8 file against fp32 on the Fashion-MNIST test set.

    python benchmarks/inference.py                      # about 6-8 minutes on 2 busy cores
    python benchmarks/inference.py --quickstart run.ckpt --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode

from moderncnn import create_model
from moderncnn.inference import load_model, optimize_for_inference, save_model
from moderncnn.inference.quantize import accuracy, datamodule_batches, int8_path, quantize_export
from moderncnn.inference.runtimes import cpu_has_bf16, installed_runtimes, resolve_threads
from moderncnn.io.card import ModelCard, Preprocess
from moderncnn.training.config import datamodule_from_config

RESULTS = Path(__file__).resolve().parent / "results" / "inference.md"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test-samples"
MODELS = {"resnet50": 224, "densenet121": 224, "googlenet": 224, "inception_v3": 299}
BATCHES = (1, 16)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, in [0, 1] pixels
MIN_SECONDS = 0.4  # timed per variant and round (at least 2 calls)


def real_images(size: int) -> Tensor:
    """The 20 CIFAR-10 samples, resized to ``size`` and normalised: 20 x 3 x size x size."""
    files = sorted(SAMPLES.glob("*.png"))
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    return Preprocess.for_size(size, MEAN, STD).normalize(x)


def measured_statistics(model: nn.Module, images: Tensor) -> nn.Module:
    """Batch-norm statistics of these images, so activations behave like a trained network's."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, _BatchNorm)):
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        model(images)
    return model.eval()


def timed(fn: Callable[[], object]) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < MIN_SECONDS:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def gemm_peak() -> float:
    """fp32 GFLOP/s of a 2048 x 2048 matrix product on the pinned threads."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / timed(lambda: torch.mm(a, b)) / 1e9


def gflops_per_image(model: nn.Module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def peers(onnx: Path, threads: int) -> dict[str, Callable[[Tensor], Tensor]]:
    """ONNX Runtime and OpenVINO (threads pinned) on our ONNX file. OpenVINO computes in bf16
    by default where the CPU has bf16 units: its fp32 peer asks for f32, and its default is a
    bf16 row of its own."""
    out = {}
    if "onnxruntime" in installed_runtimes():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        out["peer ONNX Runtime"] = lambda x: session.run(None, {"images": x.numpy()})[0]
    if "openvino" in installed_runtimes():
        import openvino as ov

        core = ov.Core()
        f32 = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        compiled = core.compile_model(str(onnx), "CPU", f32)
        out["peer OpenVINO fp32"] = lambda x: compiled(x.numpy())[0]
        if cpu_has_bf16():
            default = core.compile_model(str(onnx), "CPU", {"INFERENCE_NUM_THREADS": threads})
            out["peer OpenVINO bf16 (its default)"] = lambda x: default(x.numpy())[0]
    return out


def variants(name: str, size: int, folder: Path, args) -> tuple[dict, Tensor, float]:
    images = real_images(size)
    ours = measured_statistics(create_model(name, num_classes=1000), images[:16])
    tv = getattr(torchvision.models, name)(weights=None, init_weights=False, aux_logits=False) if (
        name in ("googlenet", "inception_v3")
    ) else getattr(torchvision.models, name)(weights=None)  # fmt: skip
    tv.load_state_dict(ours.state_dict(), strict=False)  # the same names; aux heads left out
    tv.eval()
    card = ModelCard(name, 1000, 3, preprocess=Preprocess.for_size(size, MEAN, STD))
    saved = save_model(ours, folder / name, card)
    fast = optimize_for_inference(ours)
    table: dict[str, Callable[[Tensor], object]] = {
        "torchvision eager fp32": tv,
        "ours torch fp32": lambda x: fast(x.contiguous(memory_format=torch.channels_last)),
    }
    auto = load_model(saved, runtime="auto", threads=args.threads)
    auto(images[:1])
    table[f"ours auto fp32 ({auto.engine})"] = auto
    if "openvino" in installed_runtimes() and auto.engine != "openvino":
        table["ours openvino fp32"] = load_model(saved, runtime="openvino", threads=args.threads)
    if cpu_has_bf16():  # BN folded + bf16 autocast; OpenVINO's bf16 kernels
        table["ours torch bf16"] = load_model(saved, runtime="torch", precision="bf16")
        if "openvino" in installed_runtimes():
            table["ours openvino bf16"] = load_model(
                saved, runtime="openvino", precision="bf16", threads=args.threads
            )
    table.update(peers(auto.onnx_file(), args.threads))
    if name in args.int8:
        int8 = int8_path(auto.onnx_file())
        batches = [(images, torch.zeros(len(images), dtype=torch.long))]
        quantize_export(auto.onnx_file(), int8, [images], lambda: batches, force=True)
        for engine in ("onnxruntime", "openvino"):
            if engine in installed_runtimes():
                int8_model = load_model(int8, runtime=engine, threads=args.threads)
                table[f"ours {engine} int8"] = int8_model
    return table, images, gflops_per_image(tv, size)


def fidelity(table: dict, images: Tensor) -> dict[str, str]:
    """max |Δlogit| vs torchvision (fp32; bf16 with its top-1 agreement), top-1 agreement with
    it (int8), on the real images."""
    with torch.inference_mode():
        reference = table["torchvision eager fp32"](images)
        out = {}
        for label, fn in table.items():
            logits = torch.as_tensor(np.asarray(fn(images))).float()
            agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
            if "int8" in label:
                out[label] = f"top-1 {agree:.0%}"
            elif "bf16" in label:
                out[label] = f"{(logits - reference).abs().max().item():.1e}, top-1 {agree:.0%}"
            else:
                out[label] = f"{(logits - reference).abs().max().item():.1e}"
    return out


def run(args) -> list[str]:
    threads = resolve_threads(args.threads)
    args.threads = threads
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    lines = [
        "# Inference runtimes",
        "",
        f"`python benchmarks/inference.py --rounds {args.rounds}`: torch {torch.__version__}, "
        f"{threads} threads for every runtime, {os.cpu_count()} cores, bf16 units: "
        f"{'yes' if cpu_has_bf16() else 'no'}; load average {load:.1f} at the start"
        + (
            " (**a busy machine**: torch's thread pool suffers most from that, so ratios to "
            "torchvision are those of a shared machine, not a quiet one)."
            if load > 1.0
            else " (a quiet machine)."
        ),
        "",
        "| model | batch | variant | images/s | × torchvision | GFLOP/s | of GEMM peak "
        "| fidelity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    peaks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name, size in MODELS.items():
            table, images, gflops = variants(name, size, Path(tmp), args)
            quality = fidelity(table, images)
            for batch in BATCHES:
                x = images[:batch] if batch <= len(images) else images.repeat(2, 1, 1, 1)[:batch]
                seconds: dict[str, list[float]] = {label: [] for label in table}
                for r in range(args.rounds):  # interleaved, rotated so no variant always leads
                    peaks.append(gemm_peak())
                    order = list(table)[r % len(table) :] + list(table)[: r % len(table)]
                    for label in order:
                        seconds[label].append(timed(lambda fn=table[label], x=x: fn(x)))
                peak = statistics.median(peaks)
                base = batch / statistics.median(seconds["torchvision eager fp32"])
                for label in table:
                    rate = batch / statistics.median(seconds[label])
                    lines.append(
                        f"| {name} | {batch} | {label} | {rate:.1f} | {rate / base:.2f} | "
                        f"{rate * gflops:.0f} | {rate * gflops / peak:.0%} | {quality[label]} |"
                    )
                print("\n".join(lines[-len(table) :]), flush=True)
    lines += ["", f"GEMM peak (fp32 `torch.mm` 2048², median of the rounds): {peak:.0f} GFLOP/s."]
    if not cpu_has_bf16():
        lines.append(
            "bf16 not run: this CPU has no bf16 units (AVX512-BF16/AMX); `--precision bf16` "
            "refuses OpenVINO here and torch emulates it, slower than fp32."
        )
    if args.quickstart:
        lines += ["", *quickstart_int8(Path(args.quickstart), threads)]
    return lines


def quickstart_int8(ckpt: Path, threads: int) -> list[str]:
    """int8 against fp32 on the Fashion-MNIST test set, for the quickstart checkpoint."""
    data = datamodule_from_config(Path(__file__).resolve().parents[1] / "configs/quickstart.yaml")
    fp32 = load_model(ckpt, runtime="onnxruntime", threads=threads)
    int8 = int8_path(ckpt.with_suffix(".onnx"))
    if not int8.is_file():
        run = f"moderncnn export --model {ckpt} --precision int8 ..."
        return [f"quickstart int8: {int8} not found; run `{run}`"]
    accs = {}
    for label, fn in {"fp32": fp32, "int8": load_model(int8, threads=threads)}.items():
        accs[label], n = accuracy(fn, datamodule_batches(data, "test"), (28, 28))
    drop = 100 * (accs["fp32"] - accs["int8"])
    return [
        f"Quickstart model ({ckpt.name}), Fashion-MNIST test set ({n} images): fp32 "
        f"{accs['fp32']:.2%}, int8 {accs['int8']:.2%}: {drop:+.2f} points drop."
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--int8", nargs="*", default=["resnet50"], help="models to quantize")
    parser.add_argument("--quickstart", default=None, help="quickstart .ckpt (int8 accuracy)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    for name in [m for m in MODELS if m not in args.models]:
        del MODELS[name]
    lines = run(args)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
