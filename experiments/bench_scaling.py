"""Train-step throughput over device counts and embedding-table sizes.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench_scaling.py

Two sweeps on one config (default: the e-commerce MMoE at batch 1024):

1. data parallelism: examples/s of the jitted train step on meshes of 1, 2, 4, 8 devices;
2. table size: the user table grown to each of ``--table_rows`` rows, on each mesh of
   ``--table_meshes`` (DATAxMODEL; the model axis splits tables by rows): examples/s and
   XLA's per-device memory estimate.

On the CPU, forced host devices share the same cores, so more devices cannot be faster:
there the numbers check that sharding works and what it costs in overhead and per-device
memory. On GPU or TPU hosts they are real scaling. Device counts above what the machine has
are skipped. Prints tables and appends one JSON line per measurement to
experiments/results/scaling.jsonl.
"""

from __future__ import annotations

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
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Data-parallel device counts.")
_TABLE_ROWS = flags.DEFINE_list(
    "table_rows", ["10000", "100000", "1000000"], "User-table sizes (rows) for sweep 2."
)
_TABLE_MESHES = flags.DEFINE_list(
    "table_meshes", ["8x1", "4x2", "2x4", "1x8"], "Meshes (DATAxMODEL) for sweep 2."
)
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "scaling.jsonl"), "JSONL to append."
)


def measure(config, dataset, num_devices: int, model: int) -> dict:
    mesh = parallel.make_mesh(num_devices, model=model)
    r = benchmark.measure_trainer_step(config, dataset, mesh, _STEPS.value, _REPEATS.value)
    memory = r.pop("memory")
    return {
        **r,
        "per_device_mib": memory.get("per_device_total_mib"),
        "state_per_device_mib": memory.get("arguments_mib"),
    }


def _with(config, **data):
    config = config.copy_and_resolve_references()
    config.train.batch_size = _BATCH.value
    config.data.update(data)
    return config


def main(argv):
    del argv
    base = _CONFIG.value
    available = jax.device_count()
    common = benchmark.record_header("scaling", base, _BATCH.value)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    config = _with(base)
    dataset = load_dataset(config.data, config.seed)
    print(f"sweep 1: data parallelism, {base.data.name} {base.model.trunk}, batch {_BATCH.value}")
    print(f"{'devices':>7} {'step ms':>8} {'examples/s':>11} {'x 1 device':>10} {'MiB/device':>10}")
    single = None
    for n in map(int, _DEVICES.value):
        if n > available:
            logging.warning("skipping %d devices: this machine has %d", n, available)
            continue
        r = {**common, "sweep": "devices", "user_rows": config.data.num_users}
        r.update(measure(config, dataset, n, 1))
        single = single or r["examples_per_s"]
        r["speedup"] = r["examples_per_s"] / single
        rows.append(r)
        print(
            f"{n:>7} {r['step_ms']:>8.2f} {r['examples_per_s']:>11.0f} {r['speedup']:>10.2f} "
            f"{r['per_device_mib'] or float('nan'):>10.1f}"
        )

    print("\nsweep 2: user-table rows x mesh (DATAxMODEL; tables split by rows over model)")
    print(f"{'rows':>9} {'mesh':>5} {'step ms':>8} {'examples/s':>11} {'state MiB/dev':>13}")
    for table_rows in map(int, _TABLE_ROWS.value):
        config = _with(base, num_users=table_rows)
        dataset = load_dataset(config.data, config.seed)
        for text in _TABLE_MESHES.value:
            n, model = parallel.parse_mesh_shape(text)
            if n > available:
                logging.warning("skipping mesh %s: this machine has %d devices", text, available)
                continue
            r = {**common, "sweep": "table_rows", "user_rows": table_rows}
            r.update(measure(config, dataset, n, model))
            rows.append(r)
            print(
                f"{table_rows:>9} {text:>5} {r['step_ms']:>8.2f} {r['examples_per_s']:>11.0f} "
                f"{r['state_per_device_mib'] or float('nan'):>13.1f}"
            )
    with out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    for r in rows:
        print(json.dumps(r))
    print(f"{len(rows)} measurements appended to {out}")


if __name__ == "__main__":
    app.run(main)
