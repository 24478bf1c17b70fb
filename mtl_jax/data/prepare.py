"""Encode a file dataset once into shards that training streams: data larger than memory.

    python -m mtl_jax.data.prepare --config=configs/files.py --out=DIR
    python run.py --config=configs/files.py --config.data.prepared=DIR

Two passes over the files, a chunk (``--chunk_rows``) at a time, so memory holds a chunk,
the encoders and nothing table-sized: the first fits every feature's encoder on the train
rows (mtl_jax/data/files.py's ``FeatureFitter``: the same code the in-memory dataset uses),
the second encodes each row as training would and appends it to its split's shards.

Shards are ArrayRecord files (grain reads them by index). A record is a block of up to
``--block_rows`` encoded rows: each column's bytes one after another, in the order and with
the dtypes and shapes ``manifest.json`` lists, so decoding a block is a few ``frombuffer``
calls. Train blocks go round-robin to ``--shards`` files; each training process reads only
its own shards (mtl_jax/data/streaming.py). Validation and test get one shard each (they
are read whole at every evaluation).

Rows are assigned to splits without a global shuffle: when validation is carved from the
train files (or every split from ``data.file``), a row goes to a split by a seeded hash of
its position (``split=random``) or of its user (``split=user``), so the fractions hold in
expectation, not to the row. ``split=time`` needs a global order and is refused: split such
files by time first (one file or glob per split).

The output appears complete or not at all: everything is written in a temporary directory
next to ``--out`` and renamed into place at the end; an existing ``--out`` is never touched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax import paths
from mtl_jax.data import files
from mtl_jax.data.hashing import fingerprints
from mtl_jax.errors import ConfigError, DataFormatError
from mtl_jax.tasks import LabelPriorSums

log = logging.getLogger("mtl_jax")

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
RUN_ONLY_KEYS = ("prepared", "window_blocks")  # data keys that do not change prepared data


def uniform(keys: np.ndarray, seed: int) -> np.ndarray:
    """A seeded draw in [0, 1) per key (row positions or ids), the same in any chunking."""
    salt = fingerprints(np.array([seed + 1], np.int64))[0]
    with np.errstate(over="ignore"):
        mixed = fingerprints(fingerprints(keys) ^ salt)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _split_of(draw: np.ndarray, validation: float, test: float) -> np.ndarray:
    """0, 1 or 2 (train, validation, test) per row from its draw."""
    return np.where(draw < test, 2, np.where(draw < test + validation, 1, 0)).astype(np.int8)


@dataclasses.dataclass
class Source:
    """A group of files and the split(s) its rows go to."""

    paths: list[str]
    split: str  # train, validation, test, or "rule": split by data.split
    carve_validation: bool = False  # train files whose rows also give the validation split


def sources(data: Mapping[str, Any]) -> list[Source]:
    where = (data.get("data_dir", ""), data.get("hint", ""))
    if data.get("file"):
        if any(data.get(s) for s in SPLITS):
            raise ConfigError("set data.file or data.train/validation/test, not both")
        rule = data.get("split", "random")
        if rule not in ("random", "user"):
            raise ConfigError(
                f"data.split={rule!r} cannot be prepared in one pass: split the files by "
                "time first and name them in data.train/validation/test (or use random, user)"
            )
        if rule == "user" and not data.get("split_column"):
            raise ConfigError("data.split='user' needs data.split_column")
        return [Source(files.expand_paths(data["file"], "data.file", *where), "rule")]
    if not data.get("train") or not data.get("test"):
        raise ConfigError("data.train and data.test (or data.file) must name files")
    out = [
        Source(
            files.expand_paths(data["train"], "data.train", *where),
            "train",
            carve_validation=not data.get("validation"),
        )
    ]
    if data.get("validation"):
        out.append(
            Source(files.expand_paths(data["validation"], "data.validation", *where), "validation")
        )
    out.append(Source(files.expand_paths(data["test"], "data.test", *where), "test"))
    return out


def chunks(
    source: Source, data: Mapping[str, Any], seed: int, rows: int, header: dict[str, Any]
) -> Iterator[tuple[str, files.Table]]:
    """``(split, table)`` pieces of a source's files, a chunk at a time, rows assigned.
    ``header`` carries the first file's columns (and name) across sources: every file must
    have the same ones."""
    position = 0
    val = float(data.get("validation_fraction", 0.1))
    test = float(data.get("test_fraction", 0.1)) if source.split == "rule" else 0.0
    for path in source.paths:
        for table in files.read_chunks(path, data, rows):
            if not header:
                header.update(columns=list(table.columns), file=path)
            elif list(table.columns) != header["columns"]:
                raise DataFormatError(
                    f"{path}: columns {list(table.columns)} differ from the train file "
                    f"{header['file']}'s {header['columns']}"
                )
            n = len(table)
            if source.split == "rule" or source.carve_validation:
                if data.get("split", "random") == "user" and source.split == "rule":
                    column = data["split_column"]
                    keys = files.key_strings(files.table_column(table, column, "data.split_column"))
                    draw = uniform(keys, seed)
                else:
                    draw = uniform(np.arange(position, position + n, dtype=np.int64), seed)
                which = _split_of(draw, val, test)
                for k, split in enumerate(SPLITS):
                    index = np.flatnonzero(which == k)
                    if index.size:
                        yield split, table.take(index)
            else:
                yield source.split, table
            position += n


class BlockWriter:
    """Appends encoded rows of one split to its shards as blocks of ``block_rows`` rows."""

    def __init__(self, directory: pathlib.Path, split: str, shards: int, block_rows: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.names = [f"{split}-{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]
        self.writers = [
            ArrayRecordWriter(str(directory / name), "group_size:1") for name in self.names
        ]
        self.blocks: list[list[int]] = [[] for _ in range(shards)]
        self.block_rows = block_rows
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.next_shard = 0
        self.layout: list[tuple[str, str, tuple[int, ...]]] | None = None

    def add(self, columns: dict[str, np.ndarray]) -> None:
        if self.layout is None:
            self.layout = [(k, v.dtype.str, v.shape[1:]) for k, v in columns.items()]
        parts = [*self.buffer, columns]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in columns}
        n = len(next(iter(merged.values())))
        start = 0
        while n - start >= self.block_rows:
            self._emit({k: v[start : start + self.block_rows] for k, v in merged.items()})
            start += self.block_rows
        self.buffer = [{k: v[start:] for k, v in merged.items()}] if start < n else []
        self.buffered = n - start

    def _emit(self, block: dict[str, np.ndarray]) -> None:
        rows = len(next(iter(block.values())))
        payload = b"".join(
            np.ascontiguousarray(block[k], dtype=np.dtype(d)).tobytes() for k, d, _ in self.layout
        )
        self.writers[self.next_shard].write(payload)
        self.blocks[self.next_shard].append(rows)
        self.next_shard = (self.next_shard + 1) % len(self.writers)

    def close(self) -> dict[str, Any]:
        if self.buffered:
            self._emit(self.buffer[0])
        for w in self.writers:
            w.close()
        return {
            "rows": int(sum(sum(b) for b in self.blocks)),
            "shards": [
                {"file": n, "blocks": b} for n, b in zip(self.names, self.blocks, strict=True)
            ],
        }


def _encode_chunk(
    table: files.Table, encoders: Mapping[str, Any], columns: Mapping[str, str], labels: Mapping
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, enc in encoders.items():
        for key, value in files.encode_feature(name, enc, columns[name], table).items():
            out[f"features/{key}"] = value
    for task, spec in labels.items():
        out[f"labels/{task}"], out[f"masks/{task}"] = files.label_column(task, dict(spec), table)
    return out


def prepare(
    data: Mapping[str, Any],
    features: Mapping[str, Any],
    seed: int,
    out: str | pathlib.Path,
    *,
    shards: int = 8,
    block_rows: int = 4096,
    chunk_rows: int = 1 << 18,
) -> dict[str, Any]:
    """Writes the prepared dataset into ``out`` (which must not exist) and returns its
    manifest."""
    out = pathlib.Path(out)
    if out.exists():
        raise ConfigError(
            f"--out {out} exists; prepared data is never written over: pick a new one"
        )
    if shards < 1 or block_rows < 1 or chunk_rows < 1:
        raise ConfigError(
            "shards, block_rows and chunk_rows must be >= 1; got "
            f"{shards}, {block_rows}, {chunk_rows}"
        )
    data = dict(data)
    labels = dict(data.pop("labels", {}) or {})
    tasks = files.task_specs(labels)
    if not features:
        raise ConfigError("a file dataset needs a features section (see configs/files.py)")
    features = {k: dict(v) for k, v in features.items()}
    srcs = sources(data)
    start = time.perf_counter()

    fitters = {name: files.FeatureFitter(name, spec) for name, spec in features.items()}
    texts = any(f.kind == "text" for f in fitters.values())  # read by every split's rows
    seen, header = 0, {}
    for source in srcs:
        if source.split in ("validation", "test") and not texts:
            continue
        for split, table in chunks(source, data, seed, chunk_rows, header):
            for fitter in fitters.values():
                fitter.update(table, split)
            seen += len(table)
        log.info(
            "prepare: fitted on %d rows (%.0f rows/s)", seen, seen / (time.perf_counter() - start)
        )
    encoders = {name: f.finish() for name, f in fitters.items()}
    columns = {name: f.column for name, f in fitters.items()}

    with paths.staged_directory(out) as staging:
        writers = {
            s: BlockWriter(staging, s, shards if s == "train" else 1, block_rows) for s in SPLITS
        }
        sums = {t.name: LabelPriorSums(t) for t in tasks}
        written, header = 0, {}
        for source in srcs:
            for split, table in chunks(source, data, seed, chunk_rows, header):
                encoded = _encode_chunk(table, encoders, columns, labels)
                if split == "train":
                    for t in tasks:
                        sums[t.name].add(encoded[f"labels/{t.name}"], encoded[f"masks/{t.name}"])
                writers[split].add(encoded)
                written += len(table)
            log.info(
                "prepare: encoded %d rows (%.0f rows/s overall)",
                written, (seen + written) / (time.perf_counter() - start),
            )  # fmt: skip
        splits = {s: w.close() for s, w in writers.items()}
        for s, info in splits.items():
            if info["rows"] == 0:
                raise DataFormatError(f"the {s} split is empty (files {[x.paths for x in srcs]})")
        for t in tasks:
            if sums[t.name].count == 0:
                raise DataFormatError(f"task {t.name!r}: every train row's label is missing")
        files.FileEncoding(encoders, columns).save(staging / "features")
        manifest = {
            "format": FORMAT_VERSION,
            "dataset_name": data.get("dataset_name", "files") or "files",
            "features": [dataclasses.asdict(s) for s in files.feature_specs(encoders)],
            "tasks": [dataclasses.asdict(t) for t in tasks],
            "layout": writers["train"].layout or writers["test"].layout,
            "block_rows": block_rows,
            "splits": splits,
            "priors": {t.name: sums[t.name].prior().tolist() for t in tasks},
            "source": {**source_config({**data, "labels": labels}, features), "seed": seed},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info(
        "prepare: %s in %.1fs: %s", out, time.perf_counter() - start,
        ", ".join(f"{s} {i['rows']} rows" for s, i in splits.items()),
    )  # fmt: skip
    return manifest


def _plain(value: Any) -> Any:
    """A config section as JSON values (tuples as lists), to compare with a later config."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def source_config(data: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a config that decide prepared data, as its manifest records them."""
    data = dict(data)
    labels = dict(data.pop("labels", {}) or {})
    for key in (*RUN_ONLY_KEYS, "name"):
        data.pop(key, None)
    return {
        "data": _plain(data),
        "labels": _plain({k: dict(v) for k, v in labels.items()}),
        "features": _plain({k: dict(v) for k, v in features.items()}),
    }


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from mtl_jax import configlib

    del argv
    config = flags.FLAGS.config
    if config.data.name != "files":
        raise ConfigError(
            f"prepare reads file datasets (data.name='files'), not {config.data.name!r}"
        )
    seed = configlib.data_seed(config)
    prepare(
        {k: v for k, v in config.data.items() if k not in RUN_ONLY_KEYS},
        config.features,
        seed,
        flags.FLAGS.out,
        shards=flags.FLAGS.shards,
        block_rows=flags.FLAGS.block_rows,
        chunk_rows=flags.FLAGS.chunk_rows,
    )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "a file dataset's config (configs/files.py)")
    flags.DEFINE_string("out", None, "the directory to create")
    flags.DEFINE_integer("shards", 8, "train shards (a multiple of the training processes)")
    flags.DEFINE_integer("block_rows", 4096, "rows per record")
    flags.DEFINE_integer("chunk_rows", 1 << 18, "rows read and encoded at a time")
    flags.mark_flags_as_required(["config", "out"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    app.run(main)
