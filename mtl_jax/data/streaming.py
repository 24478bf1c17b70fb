"""Training from prepared shards (mtl_jax/data/prepare.py): the train split is never whole
in memory.

``load_prepared(DIR)`` gives a ``MultiTaskDataset`` whose train split is a ``StreamedSplit``
(its rows stay in this process's shards) and whose validation and test splits are read
whole (evaluation sweeps them every time anyway).

Shuffling without the whole split: each epoch permutes this process's blocks (seeded by
the seed and the epoch), takes them ``window_blocks`` at a time, and permutes the rows of
each window; batches are cut from that order. A batch is a pure function of its step
number, so the grain iterator over ``MapDataset.range(num_steps)`` checkpoints and resumes
exactly, as the in-memory pipeline does (mtl_jax/data/pipeline.py). Each JAX process reads
only the shards ``process_index::process_count`` and yields its own part of the global
batch.
"""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import shutil
import threading
from typing import Any

import numpy as np

from mtl_jax.data.prepare import FORMAT_VERSION, MANIFEST, source_config
from mtl_jax.data.schema import FeatureSpec, MultiTaskDataset, Split
from mtl_jax.errors import ConfigError, DataFormatError
from mtl_jax.tasks import TaskSpec

Batch = dict[str, dict[str, np.ndarray]]
log = logging.getLogger("mtl_jax")


class Blocks:
    """Random access to the blocks of some shards: decoding a record into columns."""

    def __init__(self, directory: pathlib.Path, manifest: dict, shards: list[dict]):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.layout = [(k, np.dtype(d), tuple(shape)) for k, d, shape in manifest["layout"]]
        self.row_bytes = sum(d.itemsize * int(np.prod(shape)) for _, d, shape in self.layout)
        paths = [str(directory / s["file"]) for s in shards if s["blocks"]]
        self.rows = [r for s in shards if s["blocks"] for r in s["blocks"]]  # per block
        self.source = ArrayRecordDataSource(paths) if paths else None

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: int) -> dict[str, np.ndarray]:
        """One block's columns, keyed ``features/user``, ``labels/click``, ``masks/click``."""
        record = self.source[int(index)]
        n = len(record) // self.row_bytes
        if n * self.row_bytes != len(record) or n != self.rows[index]:
            raise DataFormatError(
                f"block {index}: {len(record)} bytes is not {self.rows[index]} rows of "
                f"{self.row_bytes} bytes; the prepared data is damaged: prepare it again"
            )
        out, offset = {}, 0
        for key, dtype, shape in self.layout:
            size = n * dtype.itemsize * int(np.prod(shape))
            out[key] = np.frombuffer(record, dtype, count=size // dtype.itemsize, offset=offset)
            out[key] = out[key].reshape((n, *shape))
            offset += size
        return out


def _nest(columns: dict[str, np.ndarray]) -> Batch:
    out: Batch = {"features": {}, "labels": {}, "masks": {}}
    for key, value in columns.items():
        group, _, name = key.partition("/")
        out[group][name] = value
    return out


class StreamedSplit:
    """The train split of prepared data: this process's shards, read a window at a time."""

    def __init__(self, directory: pathlib.Path, manifest: dict, tasks: tuple[TaskSpec, ...]):
        import jax

        self.directory, self.manifest = directory, manifest
        shards = manifest["splits"]["train"]["shards"]
        count, index = jax.process_count(), jax.process_index()
        if len(shards) % count:
            raise ConfigError(
                f"{directory}: {len(shards)} train shards do not divide over {count} JAX "
                "processes; prepare with --shards a multiple of the process count"
            )
        self.blocks = Blocks(directory, manifest, shards[index::count])
        self.process_count = count
        self._priors = {t.name: np.asarray(manifest["priors"][t.name]) for t in tasks}

    def __len__(self) -> int:
        """Rows in this process's shards."""
        return int(sum(self.blocks.rows))

    def prior(self, task: TaskSpec) -> np.ndarray:
        """The task's label prior over the whole train split, summed by ``prepare``."""
        prior = self._priors[task.name]
        return prior if prior.ndim else prior[()]

    def step_gather(self, batch_size: int, seed: int, window_blocks: int) -> WindowGather:
        if batch_size % self.process_count:
            raise ValueError(
                f"batch size {batch_size} does not divide over {self.process_count} JAX processes"
            )
        return WindowGather(self.blocks, batch_size // self.process_count, seed, window_blocks)


class WindowGather:
    """Maps a step number to this process's batch of that step (see the module doc)."""

    def __init__(self, blocks: Blocks, batch_size: int, seed: int, window_blocks: int):
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.window_blocks = max(1, window_blocks)
        self.rows = int(sum(blocks.rows))
        self.batches_per_epoch = self.rows // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"batch size {batch_size} exceeds the {self.rows} training examples")
        self._lock = threading.Lock()
        self._windows: collections.OrderedDict = collections.OrderedDict()
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's block order and each window's first row in the epoch's order."""
        with self._lock:
            if epoch not in self._epochs:
                order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.blocks))
                sizes = np.asarray(self.blocks.rows)[order]
                ends = np.add.reduceat(sizes, np.arange(0, len(order), self.window_blocks))
                starts = np.concatenate([[0], np.cumsum(ends)])
                self._epochs = {e: v for e, v in self._epochs.items() if e >= epoch - 1}
                self._epochs[epoch] = (order, starts)
            return self._epochs[epoch]

    def _window(self, epoch: int, w: int) -> dict[str, np.ndarray]:
        key = (epoch, w)
        with self._lock:
            if key in self._windows:
                self._windows.move_to_end(key)
                return self._windows[key]
        order, _ = self._epoch(epoch)
        picked = order[w * self.window_blocks : (w + 1) * self.window_blocks]
        parts = [self.blocks.read(b) for b in picked]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        perm = np.random.default_rng([self.seed, epoch, w + 1]).permutation(
            len(next(iter(merged.values())))
        )
        window = {k: v[perm] for k, v in merged.items()}
        with self._lock:
            self._windows[key] = window
            while len(self._windows) > 4:  # the prefetching threads' neighbours
                self._windows.popitem(last=False)
        return window

    def __call__(self, step: int) -> Batch:
        epoch, b = divmod(int(step), self.batches_per_epoch)
        _, starts = self._epoch(epoch)
        lo, hi = b * self.batch_size, (b + 1) * self.batch_size
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        pieces = []
        w = first
        while starts[w] < hi:
            window = self._window(epoch, w)
            a, z = max(lo, starts[w]) - starts[w], min(hi, starts[w + 1]) - starts[w]
            pieces.append({k: v[a:z] for k, v in window.items()})
            w += 1
        columns = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        return _nest(columns)


class PreparedEncoding:
    """The fitted encoders ``prepare`` saved: copied into a run's workdir like a file
    dataset's (mtl_jax/data/files.py ``FileEncoding``)."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory

    def save(self, directory: str | pathlib.Path) -> None:
        shutil.copytree(self.directory, directory, dirs_exist_ok=True)


def _whole_split(directory: pathlib.Path, manifest: dict, split: str) -> Split:
    blocks = Blocks(directory, manifest, manifest["splits"][split]["shards"])
    parts = [blocks.read(i) for i in range(len(blocks))]
    nested = _nest({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return Split(nested["features"], nested["labels"], nested["masks"])


def read_manifest(directory: str | pathlib.Path) -> dict:
    path = pathlib.Path(directory) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"data.prepared: {directory} holds no {MANIFEST}; write it with "
            "`python -m mtl_jax.data.prepare --config=... --out=DIR`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"data.prepared: {directory} is format {manifest.get('format')}, this code reads "
            f"{FORMAT_VERSION}: prepare it again"
        )
    return manifest


def _differences(recorded: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(recorded) | set(current)):
            out += _differences(recorded.get(k), current.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if recorded == current else [f"{path}: prepared {recorded!r}, config {current!r}"]


def load_prepared(
    directory: str, seed: int, data: dict | None = None, features: dict | None = None
) -> MultiTaskDataset:
    """The dataset ``prepare`` wrote to ``directory``. ``data``/``features``: the run's
    config sections, which must be the ones the data was prepared with (ConfigError naming
    each difference otherwise); the seed only warns (it drew the validation carve)."""
    root = pathlib.Path(directory)
    manifest = read_manifest(root)
    if data is not None:
        recorded = {k: manifest["source"][k] for k in ("data", "labels", "features")}
        current = source_config(data, features or {})
        diffs = _differences(recorded, current)
        if diffs:
            raise ConfigError(
                f"data.prepared: {directory} was prepared from another config: "
                + "; ".join(diffs[:8])
                + "; prepare again or set the config back"
            )
    if manifest["source"]["seed"] != seed:
        log.warning(
            "data.prepared: %s was prepared with seed %s (its validation carve), not %s",
            directory, manifest["source"]["seed"], seed,
        )  # fmt: skip
    features_ = tuple(FeatureSpec(**f) for f in manifest["features"])
    tasks = tuple(
        TaskSpec(**{**t, "class_weights": tuple(t["class_weights"])}) for t in manifest["tasks"]
    )
    saved = json.loads((root / "features" / "features.json").read_text())
    texts = {n: tuple(e["texts"]) for n, e in saved.items() if e["kind"] == "text"}
    return MultiTaskDataset(
        name=manifest["dataset_name"],
        features=features_,
        tasks=tasks,
        train=StreamedSplit(root, manifest, tasks),
        validation=_whole_split(root, manifest, "validation"),
        test=_whole_split(root, manifest, "test"),
        encoding=PreparedEncoding(root / "features"),
        texts=texts,
    )
