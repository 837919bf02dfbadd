"""Run a model on the fastest engine installed: torch, ONNX Runtime or OpenVINO; fp32, bf16, int8.

=============  ==========================================================================
runtime        what runs
=============  ==========================================================================
``torch``      the batch-norm-folded, channels-last network (bf16: under autocast)
``onnxruntime`` the verified ONNX export in an ONNX Runtime CPU session
``openvino``   the same ONNX file compiled by OpenVINO for the CPU
``auto``       on CUDA torch; on a CPU an installed ONNX Runtime, else OpenVINO, else torch
=============  ==========================================================================

Precision ``bf16`` needs bf16 units in the CPU (AVX512-BF16 or AMX) to pay: where there are
none OpenVINO refuses it and torch warns (it emulates bf16, slower than fp32). ``int8`` runs a
statically quantized ONNX file (:mod:`moderncnn.inference.quantize`), in ONNX Runtime or OpenVINO.

Threads: one setting for every runtime, ``threads=`` (``--threads``), else the environment
variable ``MODERNCNN_THREADS``, else the cores this process may run on. On a machine busy with
other work ONNX Runtime and OpenVINO held up at that default where torch's pool slowed down
(benchmarks/results/inference.md): another reason ``auto`` picks them on a CPU.

Beside ``model.onnx`` its sidecar ``model.onnx.json`` holds what the graph does not: the model
card (class names, preprocessing, ...), input size, precision and how it was checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from moderncnn.io.atomic import atomic_write_text
from moderncnn.io.card import read_card_json
from moderncnn.io.checkpoint import is_torchscript_archive
from moderncnn.io.errors import ConfigError, DataError, MissingFileError

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "THREADS_ENV",
    "EXPORT_FORMATS",
    "ExportedModel",
    "check_precision",
    "check_signature",
    "choose_runtime",
    "check_torchscript_archive",
    "cpu_has_bf16",
    "format_of",
    "installed_runtimes",
    "load_exported",
    "quiet_deprecation",
    "resolve_threads",
    "run_exported",
    "sidecar_path",
    "update_sidecar",
]

Runtime = Literal["auto", "torch", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
THREADS_ENV = "MODERNCNN_THREADS"
# More threads than this many per core only queue up; tens of thousands made ONNX Runtime spend
# minutes creating them (and torch fail with "Thread creation failed").
THREADS_PER_CORE = 4
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# The Python package each runtime lives in (torch is always there).
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# The CPU feature flags (/proc/cpuinfo) of bf16 arithmetic units.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def sidecar_path(path: str | Path) -> Path:
    """The JSON file beside an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


@contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Silence PyTorch's notices that TorchScript and its ONNX exporter are deprecated.

    The user chose the format, and TorchScript files still run without Python (libtorch).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# --- choosing a runtime, a precision and threads ------------------------------------------------


def installed_runtimes() -> list[str]:
    """The runtimes this Python can run: torch, and ONNX Runtime / OpenVINO when installed."""
    found = [n for n, package in _PACKAGES.items() if importlib.util.find_spec(package)]
    return ["torch", *found]


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic units (AVX512-BF16 or AMX), as Linux's
    ``/proc/cpuinfo`` flags say. Elsewhere no public API tells, so False: fp32 is never wrong,
    and ``--precision bf16`` still asks for bf16 explicitly."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return any(flag in flags for flag in _BF16_FLAGS)


def choose_runtime(runtime: str, precision: str = "fp32", device: str | torch.device = "cpu"):
    """The runtime that ``runtime`` (maybe ``"auto"``) means for this precision and device."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    installed = installed_runtimes()
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "auto":
        if not on_cpu:
            return "torch"
        # Measured in benchmarks/results/inference.md: ONNX Runtime leads at fp32 and int8.
        # OpenVINO is the engine with bf16 kernels; without bf16 units torch emulates them.
        bf16 = ["openvino", "torch"] if cpu_has_bf16() else ["torch"]
        order = bf16 if precision == "bf16" else ["onnxruntime", "openvino"]
        runtime = next((r for r in order if r in installed), "torch")
    elif runtime not in installed:
        raise ConfigError(
            f"runtime {runtime!r} is not installed; pip install {_PACKAGES[runtime]} "
            f"(or pip install 'moderncnn[{runtime}]'), or choose one of {installed}"
        )
    if runtime != "torch" and not on_cpu:
        raise ConfigError(f"runtime {runtime!r} runs on the CPU here; use device='cpu'")
    check_precision(runtime, precision, device)
    return runtime


def check_precision(runtime: str, precision: str, device: str | torch.device = "cpu") -> None:
    """Refuse, in one line, a precision this runtime or CPU cannot run fast."""
    if precision == "int8" and runtime == "torch":
        raise ConfigError(
            "precision 'int8' runs a quantized ONNX file: choose runtime 'onnxruntime' or "
            "'openvino' (make the file with `moderncnn export CKPT --format onnx --int8 "
            "--calibrate CONFIG`)"
        )
    if precision != "bf16":
        return
    if runtime == "onnxruntime":
        raise ConfigError(
            "ONNX Runtime's CPU provider has no bf16 convolutions; for precision 'bf16' choose "
            "runtime 'openvino' or 'torch'"
        )
    if torch.device(device).type != "cpu" or cpu_has_bf16():
        return
    message = (
        "precision 'bf16' needs a CPU with bf16 units (AVX512-BF16 or AMX) to be fast, and this "
        "one has none (no avx512_bf16/amx_bf16 in /proc/cpuinfo)"
    )
    if runtime == "openvino":  # it would quietly compute in f32
        raise ConfigError(f"{message}; use precision 'fp32' or 'int8'")
    # torch emulates bf16 there: the same features within bf16 rounding, only slower.
    warnings.warn(f"{message}: torch emulates it, slower than fp32", stacklevel=3)


def resolve_threads(threads: int | None = None) -> int:
    """Intra-op threads for every runtime: ``threads``, else $MODERNCNN_THREADS, else the cores
    this process may use."""
    if threads is None:
        text = os.environ.get(THREADS_ENV)
        if text is None:
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1
            )  # fmt: skip
        try:
            threads = int(text)
        except ValueError:
            raise ConfigError(f"${THREADS_ENV} must be a positive int, got {text!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive int, got {threads!r}")
    cores = os.cpu_count() or 1
    if threads > THREADS_PER_CORE * cores:
        raise ConfigError(
            f"threads must be at most {THREADS_PER_CORE * cores} ({THREADS_PER_CORE} per core, "
            f"{cores} cores here), got {threads}"
        )
    return threads


# --- running an ONNX file ------------------------------------------------------------------------


def _as_numpy(x: Tensor) -> np.ndarray:
    """A C-contiguous float32 array of ``x``, copied by numpy, not by torch: a torch copy of a
    channels-last batch wakes torch's thread pool, whose threads then spin on the cores the
    ONNX runtime's threads need (GoogLeNet, batch 1, 2 cores: 35 vs 60 images/s)."""
    x = x.detach().cpu()
    x = x if x.dtype == torch.float32 else x.float()  # numpy has no bfloat16
    return np.ascontiguousarray(x.numpy())


def onnxruntime_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op workers.

    Its workers spin-wait between operators, as by default: turning that off cost 30% at batch
    1 even on a busy machine (benchmarks/results/inference.md), where ONNX Runtime held up.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = resolve_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _onnxruntime_errors() as err:  # a cut file, not ONNX, external data outside its folder
        raise DataError(
            f"ONNX Runtime cannot load {path} ({_engine_reason(err)}); the file is not a usable "
            "export: export the model again"
        ) from err


def _onnxruntime_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's exception classes (Fail, InvalidArgument, ...: they share no base but
    Exception), with RuntimeError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (RuntimeError, *found)


def _engine_reason(err: BaseException) -> str:
    """An engine's error in one line: its own words, without the source-file locations that
    OpenVINO stacks above them ("Exception from src/...", "Check 'false' failed at ...")."""
    lines = [line.strip() for line in str(err).splitlines()]
    kept = [x for x in lines if x and not x.startswith(("Exception from ", "Check '"))]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", ": ".join(kept))
    return (text or type(err).__name__)[:400]


def _graph_dims(shape: Any) -> list[int | None]:
    """An input's or output's dims, None where symbolic (a dynamic batch)."""
    return [d if isinstance(d, int) and not isinstance(d, bool) else None for d in shape]


def check_signature(
    path: Path, inputs: list[int | None], outputs: list[int | None], expect: dict[str, Any]
) -> None:
    """Refuse, in one line, a graph whose input or output shape is not the one its sidecar
    and card describe (``expect``: ``input_size`` (C, H, W), ``dynamic_batch``, ``outputs``);
    dims are None where the graph leaves them free."""
    found: list[str] = []
    size = expect.get("input_size")
    if size is not None and (
        len(inputs) != 4 or any(d not in (None, s) for d, s in zip(inputs[1:], size, strict=True))
    ):
        found.append(f"input size {list(size)} but the graph takes {inputs[1:]}")
    if expect.get("dynamic_batch") and inputs and inputs[0] is not None:
        found.append(f"dynamic_batch but the graph takes batches of {inputs[0]} only")
    width = expect.get("outputs")
    if width is not None and outputs and outputs[-1] is not None and outputs[-1] != width:
        found.append(f"{width} classes but the graph has {outputs[-1]} outputs")
    if found:
        raise DataError(
            f"{path}: its sidecar says {'; '.join(found)}; the sidecar belongs to another "
            "export: export the model again"
        )


def _onnxruntime_runner(
    path: Path, threads: int | None, expect: dict[str, Any] | None = None
) -> Callable[[Tensor], Tensor]:
    session = onnxruntime_session(path, threads)
    first = session.get_inputs()[0]
    if expect:
        outputs = _graph_dims(session.get_outputs()[0].shape)
        check_signature(path, _graph_dims(first.shape), outputs, expect)
    errors = _onnxruntime_errors()

    def run_onnxruntime(x: Tensor) -> Tensor:
        images = _as_numpy(x)
        try:
            return torch.from_numpy(session.run(None, {first.name: images})[0])
        except errors as err:
            raise DataError(
                f"ONNX Runtime cannot run {path} on a {list(images.shape)} batch "
                f"({_engine_reason(err)})"
            ) from err

    return run_onnxruntime


def openvino_compiled(path: Path, threads: int | None = None, precision: str = "fp32") -> Any:
    """``path`` compiled by OpenVINO for the CPU, at f32 unless ``precision`` is bf16.

    OpenVINO computes in bf16 by default on CPUs with bf16 units: fp32 is asked for explicitly.
    """
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": resolve_threads(threads),
        "PERFORMANCE_HINT": "LATENCY",  # one stream: all threads on each request
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except RuntimeError as err:  # its reason is kept: "... resolves to /etc/passwd which is ..."
        raise DataError(
            f"OpenVINO cannot compile {path} ({_engine_reason(err)}); the file is not a usable "
            "export: export the model again"
        ) from err


def _openvino_dims(port: Any) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _openvino_runner(
    path: Path, threads: int | None, precision: str, expect: dict[str, Any] | None = None
) -> Callable[[Tensor], Tensor]:
    compiled = openvino_compiled(path, threads, precision)
    if expect:
        dims = _openvino_dims(compiled.inputs[0]), _openvino_dims(compiled.outputs[0])
        check_signature(path, *dims, expect)
    request = compiled.create_infer_request()

    def run_openvino(x: Tensor) -> Tensor:
        images = _as_numpy(x)
        try:
            request.infer({0: images})
        except RuntimeError as err:
            raise DataError(
                f"OpenVINO cannot run {path} on a {list(images.shape)} batch "
                f"({_engine_reason(err)})"
            ) from err
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run_openvino


def run_exported(
    path: Path,
    format: str,
    runtime: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    expect: dict[str, Any] | None = None,
) -> Callable[[Tensor], Tensor]:
    """A function images -> logits (CPU tensors) running the exported file.

    ONNX files run in ``runtime`` (``auto``: ONNX Runtime if installed, else OpenVINO);
    TorchScript files in ``torch.jit``. ``expect`` (:func:`check_signature`): what the sidecar
    says the ONNX graph takes and gives, checked when it loads.
    """
    if not path.is_file():
        raise MissingFileError(f"exported model {str(path)!r} does not exist")
    if format == "onnx":
        runtime = choose_runtime(runtime, precision)
        if runtime == "torch":
            raise ConfigError(f"{path} is an ONNX file: run it with onnxruntime or openvino")
        if runtime == "openvino":
            return _openvino_runner(path, threads, precision, expect)
        return _onnxruntime_runner(path, threads, expect)
    if format != "torchscript":
        raise ConfigError(f"{path}: unknown export format {format!r}; use 'onnx' or 'torchscript'")
    if precision != "fp32":
        raise ConfigError(f"{path} is a TorchScript file: it runs at precision 'fp32' only")
    check_torchscript_archive(path)
    if threads is not None:
        torch.set_num_threads(resolve_threads(threads))
    with quiet_deprecation():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run_torchscript(x: Tensor) -> Tensor:
        with torch.inference_mode():
            try:
                return module(x.cpu().float())
            except RuntimeError as err:  # e.g. a sidecar's input size that is not the model's
                reason = (str(err).strip().splitlines() or ["RuntimeError"])[-1][:300]
                raise DataError(f"cannot run {path} on a {list(x.shape)} batch ({reason})") from err

    return run_torchscript


# An export's format is its file's own: the extension the user gave it, never a side file.
# TorchScript is code (a scripted forward can write files), so it loads only from a file named
# ``.torchscript`` that is a TorchScript archive; a sidecar saying otherwise is refused.
EXPORT_FORMATS: dict[str, str] = {".onnx": "onnx", ".torchscript": "torchscript"}


def format_of(path: Path) -> str:
    """``"onnx"`` or ``"torchscript"``, from ``path``'s extension alone (checked against its
    sidecar and, for TorchScript, its bytes); anything else is refused in one line."""
    format = EXPORT_FORMATS.get(path.suffix.lower())
    if format is None:
        raise ConfigError(
            f"{path}: not an exported model; exports end in .onnx or .torchscript, got "
            f"{path.suffix or 'no extension'!r}"
        )
    side = sidecar_path(path)
    if side.is_file():
        claimed = read_sidecar(side).get("format", format)
        if claimed != format:
            raise DataError(
                f"{side} says format {claimed!r} but {path.name} is a {format} file by its "
                "extension; the sidecar does not belong to this file: export the model again"
            )
    if format == "torchscript":
        check_torchscript_archive(path)
    return format


def check_torchscript_archive(path: Path) -> None:
    """Refuse ``path`` unless its bytes are a TorchScript archive, so that a checkpoint or any
    other file never reaches ``torch.jit.load``."""
    if not is_torchscript_archive(path):
        raise DataError(
            f"{path}: not a TorchScript archive (no code/ and constants.pkl inside); only a file "
            "written by `moderncnn export --format torchscript` or torch.jit.save loads so"
        )


@dataclass
class ExportedModel:
    """An exported classifier ready to predict: ``logits = exported(images)``."""

    path: Path
    class_names: list[str]
    run: Callable[[Tensor], Tensor] = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __call__(self, images: Tensor) -> Tensor:
        """N x C x H x W normalised images -> N x classes logits (CPU float32)."""
        return self.run(images)


def load_exported(
    path: str | Path, runtime: str = "auto", precision: str = "fp32", threads: int | None = None
) -> ExportedModel:
    """Load an ONNX or TorchScript file written by :func:`export_model`, with its sidecar.

    Without a sidecar the class names are empty and the format follows the suffix. A quantized
    file (its sidecar says ``"precision": "int8"``) runs at int8 whatever ``precision`` says.
    """
    path = Path(path)
    side = sidecar_path(path)
    meta = read_sidecar(side) if side.is_file() else {}
    precision = "int8" if meta.get("precision") == "int8" else precision
    run = run_exported(path, format_of(path), runtime, precision, threads)
    return ExportedModel(path, list(meta.get("class_names") or []), run, meta)


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of an exported model; a broken one is a one-line error naming it."""
    return read_card_json(path, "sidecar", "; export the model again")


def update_sidecar(model_path: Path, **values: Any) -> dict[str, Any]:
    """Add ``values`` to the sidecar of ``model_path`` (written atomically); return it."""
    meta = {**read_sidecar(sidecar_path(model_path)), **values}
    atomic_write_text(sidecar_path(model_path), json.dumps(meta, indent=1) + "\n")
    return meta
