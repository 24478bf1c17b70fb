"""Train-step cost of every balancing method, relative to equal weighting, in one run.

  python experiments/bench_balancing.py --config=configs/ecommerce.py --batch_size=1024
  python experiments/bench_balancing.py --config=configs/ecommerce.py --batch_size=1024 \
    --scopes=trunk,layer,representation

For each method (and each --scopes entry, for Gramian-based gradient methods): the median
time of one jitted train step (over --repeats timings of --steps steps on a batch already on
device, after compilation; every method is compiled first, then timed in interleaved
rounds so that a shared machine's slow spells hit all alike), its ratio to ``ew`` measured
in the same process, and XLA's memory estimate for the compiled step (arguments + outputs +
temporaries). Prints a table, then one JSON line per measurement (``method``, ``scope``,
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
_SCOPES = flags.DEFINE_list(
    "scopes",
    ["trunk"],
    "Where Gramian-based gradient methods take their Gramian, each timed: 'trunk' (every "
    "trunk parameter, exact), 'layer' (the trunk parameters --gramian_params selects), "
    "'representation' (config.balancing.gramian_at='representation').",
)
_GRAMIAN_PARAMS = flags.DEFINE_string(
    "gramian_params",
    "experts/(kernel|bias)_1$",
    "The 'layer' scope's regex over trunk parameter paths (config.balancing.gramian_params).",
)
_METHODS = flags.DEFINE_list("methods", list(balancing.names()), "Methods to time.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "balancing.jsonl"), "JSONL to append."
)
flags.mark_flag_as_required("config")


SCOPES = ("trunk", "layer", "representation")


def scopes_of(config, method: str) -> list[str]:
    """The --scopes a method can run in: loss-weighting methods have none of their own
    ("loss"), and DB-MTL combines whole trunk gradients (trunk only)."""
    config.unlock()
    config.balancing.method = method
    config.lock()
    # From the config, as a run builds it (static needs its per-task weights).
    rule = rule_from_config(config.balancing, list(config.tasks))
    if not rule.needs_gramian:
        return ["loss"]
    if rule.combine is not None:
        return ["trunk"]
    return list(_SCOPES.value)


def compile_method(config, dataset, method: str, scope: str) -> dict:
    """The method's compiled train step in ``scope``, ready to time, and its description."""
    config.unlock()
    config.balancing.method = method
    config.balancing.gramian_params = _GRAMIAN_PARAMS.value if scope == "layer" else ""
    config.balancing.gramian_at = "representation" if scope == "representation" else "trunk"
    config.lock()
    trainer = Trainer(config, dataset)
    state = trainer.init_state()
    batch = parallel.to_global_batch(next(trainer.train_iterator()), trainer.mesh)
    compiled = benchmark.compile_train_step(trainer.train_step, state, batch)
    memory = compiled["memory"]
    return {
        "method": method,
        "needs_task_gradients": trainer.rule.needs_gramian,
        # "trunk": the exact Gramian over the whole trunk; "layer": over the trunk
        # parameters --gramian_params selects; "representation": at the trunk's output;
        # "loss": a loss-weighting method (no Gramian).
        "scope": scope,
        "gramian_params": config.balancing.gramian_params,
        "compile_s": compiled["compile_s"],
        "xla_memory_mb": memory["per_device_total_mib"] if memory else None,
        "run": compiled["run"],
    }


def main(argv):
    del argv
    config = _CONFIG.value
    config.unlock()
    config.train.batch_size = _BATCH.value
    config.lock()
    dataset = load_dataset(config.data, config.seed)
    unknown = sorted(set(_SCOPES.value) - set(SCOPES))
    if unknown:
        raise app.UsageError(f"--scopes: unknown {unknown}; valid: {list(SCOPES)}")
    methods = _METHODS.value if "ew" in _METHODS.value else ["ew", *_METHODS.value]
    rows = [
        compile_method(config, dataset, m, scope) for m in methods for scope in scopes_of(config, m)
    ]
    # Timed in rounds over every method, so the machine's slow spells hit them alike.
    seconds = benchmark.interleaved_median_seconds(
        {i: r.pop("run") for i, r in enumerate(rows)}, _REPEATS.value, _STEPS.value
    )
    for i, r in enumerate(rows):
        r["step_ms"] = 1e3 * seconds[i]
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
    print(f"{'method':<12} {'scope':<14} {'step ms':>8} {'x ew':>6} {'XLA MB':>7}")
    lines = []
    with out.open("a") as f:
        for r in rows:
            r["ratio_vs_ew"] = r["step_ms"] / ew_ms
            lines.append(json.dumps({**common, **r}))
            f.write(lines[-1] + "\n")
            mem = f"{r['xla_memory_mb']:.1f}" if r["xla_memory_mb"] is not None else "-"
            print(
                f"{r['method']:<12} {r['scope']:<14} {r['step_ms']:>8.2f} "
                f"{r['ratio_vs_ew']:>6.2f} {mem:>7}"
            )
    for line in lines:  # one JSON line per measurement, for scripts reading stdout
        print(line)


if __name__ == "__main__":
    app.run(main)
