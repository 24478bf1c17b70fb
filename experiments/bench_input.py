"""Streaming input at scale: a generated click log of ``--rows`` rows, prepared once into
shards, then trained on with the train split never in memory.

  python experiments/bench_input.py --rows=50000000          # the issue's measurement
  python experiments/bench_input.py --rows=200000 --train_steps=20 --out=/tmp/input.jsonl

Stages, each in a process of its own so that each peak RSS is its own:

1. ``generate``: a Parquet file of ``--rows`` rows written a row group at a time (user ids
   drawn from 2M users with a long tail, raw item ids up to 1e12 from 5M items (fewer for
   fewer rows), a category,
   a price with gaps, an age, click and conversion labels from a logistic model of them),
   and a test file of a tenth as many rows (at most 100k).
2. ``prepare``: ``mtl_jax.data.prepare`` on it (users by vocabulary with min_count 2,
   items hashed into 2**20 buckets, validation 0.2% carved by the seed).
3. ``train``: the files template's model (configs/files.py: MMoE, embeddings of 8) at
   ``--batch_size`` on the prepared data: the loader's examples/s (the grain iterator
   alone, batches as numpy), the train step's examples/s (on a batch already on device,
   ``benchmark.measure_trainer_step``), then a real run of ``--train_steps`` steps with
   evaluation and checkpoints, streaming.

One JSON line per stage on stdout and appended to ``--out``: wall seconds, rows/s, peak RSS
(MiB); the train line adds ``loader_examples_per_s``, ``step_examples_per_s`` and their
ratio. Generated files live in ``--dir`` and are reused when present (``--fresh`` to redo).
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # configs/ (and mtl_jax/ when it is not installed)
_ROWS = flags.DEFINE_integer("rows", 50_000_000, "Rows of the generated train file.")
_DIR = flags.DEFINE_string("dir", "/tmp/mtl_jax_bench_input", "Where generated files go.")
_BATCH = flags.DEFINE_integer("batch_size", 4096, "Global batch size.")
_LOADER_BATCHES = flags.DEFINE_integer("loader_batches", 400, "Batches the loader is timed on.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "Steps of the streamed training run.")
_SHARDS = flags.DEFINE_integer("shards", 8, "Train shards.")
_FRESH = flags.DEFINE_bool("fresh", False, "Regenerate and re-prepare even if present.")
_STAGE = flags.DEFINE_string("stage", "", "Internal: run one stage in this process.")
_OUT = flags.DEFINE_string(
    "out", str(ROOT / "experiments" / "results" / "input.jsonl"), "JSONL to append to."
)

ROW_GROUP = 1_000_000


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _write(path: pathlib.Path, rows: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    users, items = min(2_000_000, max(100, rows // 25)), min(5_000_000, max(1000, rows // 10))
    item_ids = 10**12 - rng.choice(10**12, items, replace=False)  # raw ids, no vocabulary
    item_quality = rng.normal(0, 1, len(item_ids))
    writer = None
    tmp = path.with_suffix(".partial")
    for start in range(0, rows, ROW_GROUP):
        n = min(ROW_GROUP, rows - start)
        user = np.minimum(rng.zipf(1.3, n), users) - 1
        item = rng.integers(0, len(item_ids), n)
        category = item % 1000
        price = np.exp(rng.normal(3, 1, n))
        price[rng.random(n) < 0.01] = np.nan
        age = rng.integers(18, 80, n)
        logit = item_quality[item] - 0.3 * np.log(price + 1) + 0.2 * ((user % 7) - 3) - 1.0
        click = (rng.random(n) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(np.int8)
        conversion = (click & (rng.random(n) < 0.1)).astype(np.int8)
        table = pa.table({
            "user": user, "item": item_ids[item], "category": category, "price": price,
            "age": age, "click": click, "conversion": conversion,
        })  # fmt: skip
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.rename(path)


def _config(directory: pathlib.Path):
    """configs/files.py's model and training settings on the generated log's columns."""
    import ml_collections

    from configs import files as files_config
    from mtl_jax import config_defaults
    from mtl_jax.data import files

    template = files_config.get_config()
    features = {
        "user": files.feature_config(kind="categorical", min_count=2),
        "item": files.feature_config(kind="categorical", hash_buckets=1 << 20),
        "category": files.feature_config(kind="categorical"),
        "price": files.feature_config(kind="dense", normalize="log1p"),
        "age": files.feature_config(kind="dense", normalize="standard"),
    }
    config = config_defaults.base_config(("click", "conversion"), tuple(features), "click/auc")
    config.features = ml_collections.ConfigDict(features)
    config.data = files.data_config(
        train=str(directory / "train.parquet"),
        test=str(directory / "test.parquet"),
        validation_fraction=0.002,
        labels={"click": dict(kind="binary"), "conversion": dict(kind="binary")},
    )
    config.model.update(template.model)
    config.train.update(batch_size=_BATCH.value, eval_batch_size=16384)
    config.optim.sparse_embedding_updates = True
    return config


def stage_generate(directory: pathlib.Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _write(directory / "train.parquet", _ROWS.value, 0)
    _write(directory / "test.parquet", min(100_000, max(1000, _ROWS.value // 10)), 1)
    wall = time.perf_counter() - start
    return {"rows": _ROWS.value, "wall_s": wall, "rows_per_s": _ROWS.value / wall,
            "file_mib": (directory / "train.parquet").stat().st_size / 2**20}  # fmt: skip


def stage_prepare(directory: pathlib.Path) -> dict:
    from mtl_jax.data.prepare import RUN_ONLY_KEYS, prepare

    config = _config(directory)
    data = {k: v for k, v in config.data.items() if k not in RUN_ONLY_KEYS}
    start = time.perf_counter()
    manifest = prepare(data, config.features, config.seed, directory / "prepared",
                       shards=_SHARDS.value)  # fmt: skip
    wall = time.perf_counter() - start
    rows = sum(s["rows"] for s in manifest["splits"].values())
    size = sum(p.stat().st_size for p in (directory / "prepared").iterdir() if p.is_file())
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall,
            "splits": {s: v["rows"] for s, v in manifest["splits"].items()},
            "prepared_mib": size / 2**20}  # fmt: skip


def stage_train(directory: pathlib.Path) -> dict:
    from mtl_jax import benchmark, parallel
    from mtl_jax.data import load_dataset
    from mtl_jax.data.pipeline import train_iterator
    from mtl_jax.train import train_and_evaluate

    config = _config(directory)
    config.data.prepared = str(directory / "prepared")
    dataset = load_dataset(config.data, config.seed, config.features)
    it = train_iterator(dataset.train, batch_size=_BATCH.value, num_steps=10**9, seed=0)
    for _ in range(20):  # warm: threads started, first windows read
        next(it)
    start = time.perf_counter()
    for _ in range(_LOADER_BATCHES.value):
        next(it)
    loader = _LOADER_BATCHES.value * _BATCH.value / (time.perf_counter() - start)
    del it
    step = benchmark.measure_trainer_step(config, dataset, parallel.make_mesh(1), 20, 3)
    config.train.update(num_steps=_TRAIN_STEPS.value, eval_every=_TRAIN_STEPS.value,
                        checkpoint_every=_TRAIN_STEPS.value,
                        log_every=min(50, _TRAIN_STEPS.value))  # fmt: skip
    config.optim.warmup_steps = min(config.optim.warmup_steps, _TRAIN_STEPS.value // 4)
    workdir = directory / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    results = train_and_evaluate(config, str(workdir))
    return {
        "train_rows": len(dataset.train),
        "loader_examples_per_s": loader,
        "step_examples_per_s": step["examples_per_s"],
        "loader_over_step": loader / step["examples_per_s"],
        "run_steps": _TRAIN_STEPS.value,
        "run_wall_s": time.perf_counter() - start,
        "test_click_auc": results["test"]["click"]["auc"],
    }


STAGES = {"generate": stage_generate, "prepare": stage_prepare, "train": stage_train}


def main(argv):
    del argv
    directory = pathlib.Path(_DIR.value)
    if _STAGE.value:
        record = STAGES[_STAGE.value](directory)
        print("RESULT " + json.dumps({**record, "peak_rss_mib": _peak_rss_mib()}))
        return
    from mtl_jax import benchmark

    header = benchmark.record_header("input", _config(directory), _BATCH.value)
    if _FRESH.value:
        shutil.rmtree(directory, ignore_errors=True)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        if stage == "generate" and (directory / "train.parquet").exists():
            continue
        if stage == "prepare" and (directory / "prepared").exists():
            continue
        passed = ("rows", "dir", "batch_size", "loader_batches", "train_steps", "shards")
        flags_ = [f"--{f}={getattr(flags.FLAGS, f)}" for f in passed]
        proc = subprocess.run(
            [sys.executable, __file__, f"--stage={stage}", *flags_],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"stage {stage} failed (exit {proc.returncode})")
        record = {**header, "stage": stage, "rows": _ROWS.value, **json.loads(lines[-1][7:])}
        print(json.dumps(record), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    app.run(main)
