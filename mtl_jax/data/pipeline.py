"""grain input pipelines that gather whole batches from numpy columns.

Training: ``MapDataset.range(num_steps)`` maps each step index to one global batch, gathered
with numpy fancy indexing from a seeded per-epoch permutation. Each JAX process keeps only its
contiguous slice of the global batch (``ShardByJaxProcess``), so the global batch, and
therefore training, is the same however many processes share it. The grain iterator is
checkpointable, so a resumed run continues with exactly the batches it would have seen.

Evaluation walks a split in order, padding the last batch and zeroing its label masks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import grain
import jax
import numpy as np

from mtl_jax.data.schema import Split
from mtl_jax.data.streaming import StreamedSplit

Batch = dict[str, dict[str, np.ndarray]]
BatchTransform = Callable[[Batch, int, int], Batch]  # (batch, step, seed) -> batch


def process_slice(global_batch_size: int) -> slice:
    """Rows of a global batch that belong to this JAX process."""
    options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    count, index = options.shard_count, options.shard_index
    if global_batch_size % count:
        raise ValueError(
            f"batch size {global_batch_size} does not divide over {count} JAX processes"
        )
    per_process = global_batch_size // count
    return slice(index * per_process, (index + 1) * per_process)


def check_batch_divides(batch_size: int, num_devices: int, what: str = "batch size") -> None:
    if batch_size % num_devices:
        raise ValueError(
            f"{what} {batch_size} does not divide over {num_devices} devices on the mesh's "
            f"data axis; use a multiple of {num_devices}"
        )


class _EpochBatchGather:
    """Maps a global step index to this process's rows of that step's batch."""

    def __init__(self, columns: Batch, batch_size: int, seed: int, rows: slice):
        self._columns = columns
        self._batch_size = batch_size
        self._seed = seed
        self._rows = rows
        self._n = len(next(iter(columns["features"].values())))
        self.batches_per_epoch = self._n // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"batch size {batch_size} exceeds the {self._n} training examples")
        self._lock = threading.Lock()
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
                # Keep only the epochs that prefetching threads may still be reading.
                self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
                self._perms[epoch] = perm
            return perm

    def __call__(self, step: int) -> Batch:
        epoch, b = divmod(int(step), self.batches_per_epoch)
        index = self._permutation(epoch)[b * self._batch_size : (b + 1) * self._batch_size]
        index = np.sort(index[self._rows])  # sorted rows read memory in order; order is irrelevant
        return jax.tree.map(lambda col: col[index], self._columns)


class _Transformed:
    """A gather whose batches pass through ``transform(batch, step, seed)`` (e.g. appending
    sampled negatives, mtl_jax/data/negatives.py)."""

    def __init__(self, gather: Callable[[int], Batch], transform: BatchTransform, seed: int):
        self._gather, self._transform, self._seed = gather, transform, seed

    def __call__(self, step: int) -> Batch:
        return self._transform(self._gather(step), int(step), self._seed)


class _StackedGather:
    """Several seeds' batches of one step, stacked on a new leading (seed) axis."""

    def __init__(self, gathers: Sequence[Callable[[int], Batch]]):
        self._gathers = gathers

    def __call__(self, step: int) -> Batch:
        return jax.tree.map(lambda *cols: np.stack(cols), *(g(step) for g in self._gathers))


def train_iterator(
    split: Split | StreamedSplit,
    *,
    batch_size: int,
    num_steps: int,
    seed: int | Sequence[int],
    num_threads: int = 2,
    prefetch: int = 8,
    window_blocks: int = 64,
    transform: BatchTransform | None = None,
) -> grain.DatasetIterator:
    """A checkpointable iterator over ``num_steps`` local shards of shuffled global batches.

    ``seed`` a sequence of S seeds: each step yields S batches stacked on a leading axis,
    the i-th exactly the batch that ``seed=seed[i]`` yields (training seeds in parallel).
    A ``StreamedSplit`` (prepared shards) is shuffled ``window_blocks`` blocks at a time
    (mtl_jax/data/streaming.py). ``transform(batch, step, seed)`` rewrites each seed's
    batch of this process after it is gathered."""

    def one(s: int) -> Callable[[int], Batch]:
        if isinstance(split, StreamedSplit):
            gather = split.step_gather(batch_size, s, window_blocks)
        else:
            gather = _EpochBatchGather(split.columns(), batch_size, s, process_slice(batch_size))
        return gather if transform is None else _Transformed(gather, transform, s)

    gather = _StackedGather([one(s) for s in seed]) if isinstance(seed, Sequence) else one(seed)
    dataset = grain.MapDataset.range(num_steps).map(gather)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


def eval_batches(split: Split, batch_size: int) -> Iterator[Batch]:
    """This process's rows of each in-order global batch; padded rows carry zero masks."""
    rows = process_slice(batch_size)
    columns = split.columns()
    n = len(split)
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)[rows]
        valid = index < n
        index = np.where(valid, index, 0)
        batch = jax.tree.map(lambda col, i=index: col[i], columns)
        batch["masks"] = {k: m * valid.astype(m.dtype) for k, m in batch["masks"].items()}
        yield batch
