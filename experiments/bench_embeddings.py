"""Train-step cost against embedding-table size: dense against sparse row updates.

  python experiments/bench_embeddings.py --rows=10000,1000000,10000000 --steps=20
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench_embeddings.py \
      --rows=10000,1000000,10000000,50000000 --meshes=1x8 --modes=sparse

The e-commerce MMoE (default config) at batch 1024 with its user table grown to each of
``--rows`` rows; for each mesh (DATAxMODEL, tables split by rows over ``model``) and each
mode (``dense``: the table-sized gradient and Adagrad over every row; ``sparse``:
``optim.sparse_embedding_updates``, only the rows a batch looks up), the median step time on
a batch already on device and XLA's per-device memory estimate of the step's arguments
(parameters, optimizer state, batch). One JSON line per measurement on stdout (keys
``rows``, ``mesh``, ``sparse``, ``step_ms``, ``state_mib_per_device`` and more), appended
to ``--out``. A dense run whose state would not fit ``--dense_max_rows`` is skipped.
"""

from __future__ import annotations

import gc
import json
import pathlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import benchmark, parallel
from mtl_jax.data import load_dataset

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).parent.parent / "configs" / "ecommerce.py"), "Config."
)
_ROWS = flags.DEFINE_list("rows", ["10000", "1000000", "10000000"], "User-table sizes (rows).")
_MESHES = flags.DEFINE_list("meshes", ["1x1"], "Meshes, DATAxMODEL (model: rows split).")
_MODES = flags.DEFINE_list("modes", ["dense", "sparse"], "dense and/or sparse row updates.")
_DENSE_MAX_ROWS = flags.DEFINE_integer(
    "dense_max_rows", 10_000_000, "Skip the dense mode above this many rows (it is slow)."
)
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
_OUT = flags.DEFINE_string(
    "out",
    str(pathlib.Path(__file__).parent / "results" / "embeddings.jsonl"),
    "JSONL to append to.",
)


def measure(config, dataset, mesh_text: str) -> dict:
    """One trainer, one timed step: step ms, examples/s and XLA's memory estimate."""
    num_devices, model = parallel.parse_mesh_shape(mesh_text)
    mesh = parallel.make_mesh(num_devices, model=model)
    r = benchmark.measure_trainer_step(config, dataset, mesh, _STEPS.value, _REPEATS.value)
    memory = r.pop("memory")
    return {
        **r,
        "mesh": "x".join(str(v) for v in r["mesh"].values()),
        "state_mib_per_device": memory.get("arguments_mib"),
        "temporaries_mib_per_device": memory.get("temporaries_mib"),
        "per_device_mib": memory.get("per_device_total_mib"),
    }


def main(argv):
    del argv
    base = _CONFIG.value
    common = {
        **benchmark.record_header("embeddings", base, _BATCH.value),
        "embedding_optimizer": base.optim.embedding_optimizer,
    }
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    available = jax.device_count()
    for rows in map(int, _ROWS.value):
        config = base.copy_and_resolve_references()
        config.train.batch_size = _BATCH.value
        config.data.num_users = rows
        dataset = load_dataset(config.data, config.seed)
        for mesh_text in _MESHES.value:
            if parallel.parse_mesh_shape(mesh_text)[0] > available:
                logging.warning("skipping mesh %s: %d devices here", mesh_text, available)
                continue
            for mode in _MODES.value:
                if mode not in ("dense", "sparse"):
                    raise app.UsageError(f"--modes: {mode!r}; valid: dense, sparse")
                if mode == "dense" and rows > _DENSE_MAX_ROWS.value:
                    logging.warning("skipping dense at %d rows (--dense_max_rows)", rows)
                    continue
                config.optim.sparse_embedding_updates = mode == "sparse"
                record = {**common, "rows": rows, "sparse": mode == "sparse"}
                record.update(measure(config, dataset, mesh_text))
                print(json.dumps(record), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                gc.collect()
        del dataset
        gc.collect()


if __name__ == "__main__":
    app.run(main)
