"""Training throughput: examples/s of the jitted train step fed by the real input pipeline.

  python experiments/bench_throughput.py --config=configs/ecommerce.py --batch_size=1024 --steps=200
  python experiments/bench_throughput.py --config=configs/ecommerce.py --batch_size=1024 \
      --steps=200 --steps_per_dispatch=8

Prints one JSON line and appends it to experiments/results/throughput.jsonl. Reports, each as
the median over --repeats timed runs of --steps steps after compilation:
  train_examples_per_s     pipeline + host-to-device + train step (what training gets)
  step_examples_per_s      the train step alone, on one batch (or --steps_per_dispatch
                           stacked batches) already on device
  pipeline_examples_per_s  the grain pipeline alone (batches gathered, nothing trained)
"""

from __future__ import annotations

import json
import pathlib
import platform
import statistics
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import parallel, reporting
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_PER_DISPATCH = flags.DEFINE_integer(
    "steps_per_dispatch", 1, "Steps per call (config.train.steps_per_dispatch); divides --steps."
)
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "throughput.jsonl"), "JSONL to append."
)
flags.mark_flag_as_required("config")


def _median_rate(fn, steps: int, repeats: int, batch_size: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(steps)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv):
    del argv
    config = _CONFIG.value
    config.unlock()
    config.train.batch_size = _BATCH.value
    k = _PER_DISPATCH.value
    if k < 1 or _STEPS.value % k:
        raise app.UsageError(f"--steps_per_dispatch={k} must be >= 1 and divide --steps")
    config.train.num_steps = k * (_STEPS.value * (2 * _REPEATS.value + 1) + 1)
    config.train.steps_per_dispatch = k
    # No loop here: logging and validation cadences only need to be multiples of k.
    for key in ("eval_every", "checkpoint_every", "log_every"):
        config.train[key] = config.train.num_steps
    config.lock()
    steps, repeats, batch_size = _STEPS.value, _REPEATS.value, _BATCH.value

    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset)
    state = trainer.init_state()
    data = trainer.train_iterator()

    def next_input():  # what the loop hands one call: a batch, or k stacked
        if k == 1:
            return parallel.to_global_batch(next(data), trainer.mesh)
        return parallel.to_global_batches([next(data) for _ in range(k)], trainer.mesh)

    first = next_input()
    start = time.perf_counter()
    step_fn = trainer.train_steps if k > 1 else trainer.train_step
    compiled = step_fn.lower(state, first).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, first)
    jax.block_until_ready(metrics)

    def train_with_pipeline(n):
        nonlocal state
        for _ in range(n // k):
            state, m = compiled(state, next_input())
        jax.block_until_ready(m)

    def train_step_only(n):
        nonlocal state
        for _ in range(n // k):
            state, m = compiled(state, first)
        jax.block_until_ready(m)

    pipeline = trainer.train_iterator()

    def pipeline_only(n):
        for _ in range(n):
            next(pipeline)

    record = {
        "benchmark": "throughput",
        "config": config.data.name,
        "trunk": config.model.trunk,
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "steps_per_dispatch": k,
        "train_examples_per_s": _median_rate(train_with_pipeline, steps, repeats, batch_size),
        "step_examples_per_s": _median_rate(train_step_only, steps, repeats, batch_size),
        "pipeline_examples_per_s": _median_rate(pipeline_only, steps, repeats, batch_size),
        "compile_s": compile_s,
        "peak_rss_mb": reporting.peak_rss_mb(),
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "cpu_count": __import__("os").cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "commit": reporting.git_commit(),
    }
    line = json.dumps(record)
    print(line)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
