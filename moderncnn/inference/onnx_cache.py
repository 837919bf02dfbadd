"""ONNX exports made on first use and kept for the next run, used only while they are still
the export they were written as.

A cached export (``run.KEY.onnx``, ``backbone-NAME.KEY.onnx``) is named by the hash of the
weights and card it came from, its export key; but a name proves nothing: another model's
export copied over it would give that model's logits under this model's class names, and a
write cut short would fail in the engine on every run. So when it is written its sidecar
records the key and the SHA-256 of the ONNX file's bytes, and both are checked on every use; a
file that fails the check is exported again (issue 23, H7 and M1).

Where a folder cannot be written (read-only mount, no permission), the next place is tried:
the user cache for a checkpoint's export, the features folder for a backbone's.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from moderncnn.io.card import ModelCard
from moderncnn.io.download import sha256_file
from moderncnn.io.errors import DataError, OutputError

from .export import export_model
from .runtimes import read_sidecar, sidecar_path, update_sidecar

__all__ = ["WRITE_REFUSED", "cached_export", "is_write_refused", "verified_export"]

# The errors of a folder that cannot be written, as opposed to a full disk or a bad path:
# a read-only filesystem (EROFS) and a denied write (EACCES, EPERM).
WRITE_REFUSED = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def is_write_refused(err: OSError) -> bool:
    """Whether ``err`` says the folder cannot be written here (so another place may be)."""
    return err.errno in WRITE_REFUSED


def verified_export(path: Path, key: str) -> bool:
    """Whether ``path`` is the export its sidecar recorded for export key ``key``: the key
    matches and the file's bytes are the ones written."""
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        return False
    try:
        meta = read_sidecar(side)
    except DataError:  # a broken sidecar: export again
        return False
    return meta.get("export_key") == key and meta.get("onnx_sha256") == sha256_file(path)


def cached_export(
    network: nn.Module,
    card: ModelCard,
    places: Sequence[Path],
    key: str,
    size: tuple[int, int, int] | None,
) -> Path:
    """The verified dynamic-batch fp32 ONNX export of ``network``: the first of ``places`` that
    holds it for ``key``, else a new export written to the first place that can be written."""
    for place in places:
        if verified_export(place, key):
            return place
    refused: list[str] = []
    for place in places:
        try:
            written = export_model(network, place, "onnx", size, dynamic_batch=True, card=card)
            update_sidecar(written, export_key=key, onnx_sha256=sha256_file(written))
        except OSError as err:
            if not is_write_refused(err):
                raise
            refused.append(f"{place.parent} ({err.strerror})")
            continue
        return written
    raise OutputError(
        f"cannot write the ONNX export {places[0].name}: {' nor '.join(refused)} can be "
        "written; make one of them writable (or set $TORCH_HOME to a writable folder), or run "
        "with runtime 'torch'"
    )
