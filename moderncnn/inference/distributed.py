"""Inference over many images on one or many processes: Lightning's predict loop, in shards.

The images (numbered 0..N-1 across the splits) are cut into fixed shards of ``shard_size``
consecutive images, the same whatever the number of processes. Each process takes every
world_size-th shard not written yet, runs ``Trainer.predict`` over it in batches that never
cross a shard, and a :class:`ShardWriter` (a ``BasePredictionWriter``) saves a shard as soon
as its last image is done. Process 0 then writes the result (the manifest) last, after every
process has finished. So:

- N processes make the same shards, in the same order, as one process;
- every image is computed once: the shards are assigned by our own batch sampler
  (``use_distributed_sampler=False``), so Lightning's ``DistributedSampler`` never pads a
  process's share with repeated images (Lightning issues #10782 and #13580: the writer's
  ``batch_indices`` and padded duplicates); each batch carries its images' own indices;
- processes with unequal numbers of images do not wait for each other: the predict loop has no
  collective step, only the barriers before the first and after the last batch;
- a run killed part-way keeps its finished shards: the next run recomputes only the others.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from moderncnn.io.errors import ConfigError

__all__ = [
    "ONE_PROCESS",
    "PredictSettings",
    "Shard",
    "ShardBatches",
    "ShardWriter",
    "is_rank_zero",
    "plan_shards",
    "run_sharded",
]


@dataclass(frozen=True)
class PredictSettings:
    """Where inference runs: Lightning Trainer settings (``--trainer.*`` on the command line).

    Attributes:
        devices: processes per machine (GPUs, or CPU processes with ``accelerator="cpu"``).
        num_nodes: machines (launched by torchrun or SLURM, each with ``devices`` processes).
        strategy: ``auto`` for one process; ``ddp`` (processes started by Lightning, or by
            torchrun/SLURM when they set the ranks) or ``ddp_spawn`` for several.
        accelerator: ``cpu``, ``cuda``, ``auto``...; None: the ``device`` argument's type.
    """

    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str | None = None

    @property
    def processes(self) -> int:
        return self.devices * self.num_nodes

    def check(self) -> None:
        for name in ("devices", "num_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"trainer.{name} must be a positive int, got {value!r}")


ONE_PROCESS = PredictSettings()  # the default of the commands: one process, on their device


class Shard(NamedTuple):
    """Images ``start..stop-1`` (global numbering across splits) of one split."""

    name: str  # e.g. "train-00003"
    split: str
    start: int  # first global index
    stop: int  # one past the last global index
    offset: int  # global index of the split's first image

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(sizes: dict[str, int], shard_size: int) -> list[Shard]:
    """Split sizes (in order) -> shards of at most ``shard_size`` images, none across splits."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive int, got {shard_size!r}")
    shards, offset = [], 0
    for split, size in sizes.items():
        for i in range(math.ceil(size / shard_size)):
            start = offset + i * shard_size
            shards.append(
                Shard(
                    f"{split}-{i:05d}", split, start, min(start + shard_size, offset + size), offset
                )
            )
        offset += size
    return shards


class ShardBatches(Sampler[list[int]]):
    """Batches of this process's shards (every ``world_size``-th of ``shards``, from ``rank``);
    a batch never crosses a shard, so each shard is complete when its last batch is."""

    def __init__(self, shards: Sequence[Shard], batch_size: int, rank: int, world_size: int):
        self.shards = list(shards)[rank::world_size]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shards:
            # Lightning skips the end-of-predict hooks of a process without a batch, and with
            # them the barrier the others wait at: such a process runs one empty batch.
            yield []
        for shard in self.shards:
            for start in range(shard.start, shard.stop, self.batch_size):
                yield list(range(start, min(start + self.batch_size, shard.stop)))

    def __len__(self) -> int:
        return sum(math.ceil(len(s) / self.batch_size) for s in self.shards) or 1


@dataclass
class _Pending:
    shard: Shard
    parts: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0


class ShardWriter(BasePredictionWriter):
    """Saves each shard when its last batch is predicted; process 0 calls ``finish`` last.

    Each prediction is a dict with ``indices`` (the global index of each row: tensor),
    ``errors`` (``[(global index, message)]`` of images that could not be read) and any other
    per-row tensors or lists; ``save(shard, rows)`` gets them joined in index order.
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        save: Callable[[Shard, dict[str, Any]], None],
        finish: Callable[[], None],
    ) -> None:
        super().__init__("batch")
        self.shards = sorted(shards, key=lambda s: s.start)
        self.starts = [s.start for s in self.shards]
        self.save, self.finish = save, finish
        self.pending: _Pending | None = None

    def _shard_of(self, index: int) -> Shard:
        shard = self.shards[bisect.bisect_right(self.starts, index) - 1]
        if not shard.start <= index < shard.stop:
            raise IndexError(f"image {index} is in no shard")
        return shard

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        # Our own indices, not Lightning's batch_indices (see the module docstring).
        indices = prediction["indices"].tolist() + [i for i, _ in prediction["errors"]]
        if not indices:
            return
        shard = self._shard_of(min(indices))
        if self.pending is None or self.pending.shard != shard:
            self.pending = _Pending(shard)
        self.pending.parts.append(prediction)
        self.pending.done += len(indices)
        if self.pending.done == len(shard):
            self.save(shard, _join(self.pending.parts))
            self.pending = None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("shards written")
        failure = None
        if trainer.global_rank == 0:
            try:
                self.finish()
            except Exception as err:  # raised by every process, not only by process 0
                failure = err
        # Doubles as the barrier after the result: the other processes wait for it here.
        failure = trainer.strategy.broadcast(failure, src=0)
        if failure is not None:
            raise failure


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of the batches of one shard, joined and sorted by global index."""
    errors = sorted(e for p in parts for e in p["errors"])
    parts = [p for p in parts if len(p["indices"])] or parts[:1]  # batches of failures only
    indices = torch.cat([p["indices"] for p in parts])
    order = indices.argsort(stable=True)
    rows: dict[str, Any] = {"indices": indices[order]}
    for key in parts[0]:
        if key in ("indices", "errors"):
            continue
        values = [p[key] for p in parts]
        if isinstance(values[0], Tensor):
            rows[key] = torch.cat(values)[order]
        else:
            flat = [v for value in values for v in value]
            rows[key] = [flat[i] for i in order.tolist()]
    rows["errors"] = errors
    return rows


class _ShardedPredict(L.LightningModule):
    """Runs ``step(batch, module)`` over this process's shards of ``dataset``."""

    def __init__(self, network, step, dataset, collate, shards, batch_size, num_workers) -> None:
        super().__init__()
        self.network = network  # moved to this process's device by Lightning
        self.step, self.dataset, self.collate = step, dataset, collate
        self.shards, self.batch_size, self.num_workers = shards, batch_size, num_workers

    def setup(self, stage: str) -> None:
        # Process 0's list of the shards still to do, so that all processes agree on it even
        # when they looked at the output folder at different times (or on different disks).
        self.shards = self.trainer.strategy.broadcast(self.shards, src=0)

    def predict_dataloader(self) -> DataLoader:
        batches = ShardBatches(
            self.shards, self.batch_size, self.trainer.global_rank, self.trainer.world_size
        )
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.step(batch, self)


def is_rank_zero() -> bool:
    """Whether this is process 0 (or the only one): the process that reports results."""
    return rank_zero_only.rank == 0


def trainer_kwargs(settings: PredictSettings, device: torch.device) -> dict[str, Any]:
    """Trainer arguments: ``settings``, or for one process the given ``device``."""
    settings.check()
    accelerator = settings.accelerator or device.type
    devices: Any = settings.devices
    if settings.processes == 1 and device.index is not None and accelerator == device.type:
        devices = [device.index]
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": settings.num_nodes,
        "strategy": settings.strategy,
    }


def run_sharded(
    settings: PredictSettings,
    device: torch.device,
    network: torch.nn.Module | None,
    step: Callable[[Any, L.LightningModule], dict[str, Any]],
    dataset: Dataset,
    collate: Callable[[list[Any]], Any],
    todo: Sequence[Shard],
    writer: ShardWriter,
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = False,
) -> None:
    """``Trainer.predict`` of ``step`` over the shards ``todo``; ``writer`` saves them."""
    if not todo:  # all written by an earlier run: only the result is missing
        writer.finish()
        return
    module = _ShardedPredict(network, step, dataset, collate, list(todo), batch_size, num_workers)
    trainer = L.Trainer(
        **trainer_kwargs(settings, device),
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=False,  # ShardBatches splits the images, without padding
        inference_mode=True,
    )
    with warnings.catch_warnings():
        # Lightning cannot see that ShardBatches returns every index (it does: see the tests).
        warnings.filterwarnings("ignore", "You are using a custom batch sampler")
        warnings.filterwarnings("ignore", ".*does not have many workers")
        trainer.predict(module, return_predictions=False)
