"""Train-step cost of every balancing method, relative to equal weighting, in one run.

  python experiments/bench_balancing.py --config=configs/ecommerce.py --batch_size=1024

For each method: the median time of one jitted train step (over --repeats timings of --steps
steps on a batch already on device, after compilation), its ratio to ``ew`` measured in the
same process, and XLA's memory estimate for the compiled step (arguments + outputs +
temporaries). Prints a table, then one JSON line per method (``method``, ``scope``,
``step_ms``, ``ratio_vs_ew`` ...), and appends those lines to
experiments/results/balancing.jsonl.
"""

from __future__ import annotations

import json
import pathlib

import jax
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import balancing, benchmark, parallel, reporting
from mtl_jax.balancing.config import rule_from_config
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_GRAMIAN_PARAMS = flags.DEFINE_string(
    "gramian_params",
    "",
    "Regex over trunk parameter paths for the Gramian of Gramian-based gradient methods "
    "(config.balancing.gramian_params); '' = the whole trunk.",
)
_METHODS = flags.DEFINE_list("methods", list(balancing.names()), "Methods to time.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "balancing.jsonl"), "JSONL to append."
)
flags.mark_flag_as_required("config")


def time_method(config, dataset, method: str) -> dict:
    config.unlock()
    config.balancing.method = method
    config.lock()
    # From the config, as a run builds it (static needs its per-task weights).
    rule = rule_from_config(config.balancing, list(config.tasks))
    scoped = rule.needs_gramian and rule.combine is None
    config.unlock()
    config.balancing.gramian_params = _GRAMIAN_PARAMS.value if scoped else ""
    config.lock()
    trainer = Trainer(config, dataset)
    state = trainer.init_state()
    batch = parallel.to_global_batch(next(trainer.train_iterator()), trainer.mesh)
    timing = benchmark.time_train_step(
        trainer.train_step, state, batch, _STEPS.value, _REPEATS.value
    )
    memory = timing["memory"]
    return {
        "method": method,
        "needs_task_gradients": trainer.rule.needs_gramian,
        # "trunk": the exact Gramian over the whole trunk; "layer": over the trunk
        # parameters --gramian_params selects; "loss": a loss-weighting method (no Gramian).
        "scope": ("layer" if config.balancing.gramian_params else "trunk")
        if trainer.rule.needs_gramian
        else "loss",
        "gramian_params": config.balancing.gramian_params,
        "step_ms": timing["step_ms"],
        "compile_s": timing["compile_s"],
        "xla_memory_mb": memory["per_device_total_mib"] if memory else None,
    }


def main(argv):
    del argv
    config = _CONFIG.value
    config.unlock()
    config.train.batch_size = _BATCH.value
    config.lock()
    dataset = load_dataset(config.data, config.seed)
    methods = _METHODS.value if "ew" in _METHODS.value else ["ew", *_METHODS.value]
    rows = [time_method(config, dataset, m) for m in methods]
    ew_ms = next(r["step_ms"] for r in rows if r["method"] == "ew")
    common = {
        "benchmark": "balancing",
        "config": config.data.name,
        "trunk": config.model.trunk,
        "batch_size": _BATCH.value,
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "commit": reporting.git_commit(),
        "peak_rss_mb": reporting.peak_rss_mb(),
    }
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'method':<12} {'task grads':>10} {'step ms':>8} {'x ew':>6} {'XLA MB':>7}")
    lines = []
    with out.open("a") as f:
        for r in rows:
            r["ratio_vs_ew"] = r["step_ms"] / ew_ms
            lines.append(json.dumps({**common, **r}))
            f.write(lines[-1] + "\n")
            mem = f"{r['xla_memory_mb']:.1f}" if r["xla_memory_mb"] is not None else "-"
            print(
                f"{r['method']:<12} {str(r['needs_task_gradients']):>10} {r['step_ms']:>8.2f} "
                f"{r['ratio_vs_ew']:>6.2f} {mem:>7}"
            )
    for line in lines:  # one JSON line per measurement, for scripts reading stdout
        print(line)


if __name__ == "__main__":
    app.run(main)
