"""Where a train step spends its time: stage by stage, against XLA's FLOP count and the peak.

  python experiments/profile_step.py --config=configs/movielens.py --batch_size=1024 \\
      --config.model.embed_dim=16 --config.model.pairwise_dots=False \\
      --config.model.num_experts=4 --config.model.trunk_hidden='(128,64)' \\
      --config.model.tower_hidden='(32,)' --config.model.dropout=0.0 \\
      --config.ranking.enabled=False --methods=ew,pcgrad

For each balancing method, times (median of --repeats runs of --steps calls, after
compilation) nested programs over one batch already on device, each a prefix of the train
step, so the differences are the stages' costs:

  forward        the task losses
  backward       + the gradient of their sum (what EW's step differentiates)
  step           the whole jitted train step (optimizer, balancing, guards included)

and, for gradient methods, ``task_grads`` (forward + the T per-task trunk backward passes
+ their Gramian); then ``matmuls alone``: every dot of the compiled step, timed alone at its
own shape and summed, what the step would cost if nothing but its matmuls took time and
they ran one after another (--nomatmuls_alone skips it). XLA's cost analysis gives each
program's FLOPs and bytes; with the machine's peak (--peak_gflops, default: cores x GHz x
32 for AVX2 FMA in float32) they become achieved GFLOP/s and the share of peak. The
compiled step's HLO is inventoried (fusions, dots, copies and transposes, reductions).
Prints a table and JSON lines, and appends them to experiments/results/profile.jsonl.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import balancing, benchmark, parallel, reporting
from mtl_jax.step import (
    _embed,
    _losses_from_embedded,
    _mean_task_losses,
    _per_task_trunk_grads,
    _split_params,
)
from mtl_jax.train import Trainer, load_run_dataset

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Calls per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_METHODS = flags.DEFINE_list("methods", ["ew", "pcgrad"], "Balancing methods to profile.")
_MODES = flags.DEFINE_list(
    "task_gradients",
    ["batched", "sequential"],
    "balancing.task_gradients modes to profile gradient methods in.",
)
_PEAK = flags.DEFINE_float(
    "peak_gflops", 0.0, "The machine's float32 peak in GFLOP/s (0: cores x GHz x 32, AVX2 FMA)."
)
_MATMULS = flags.DEFINE_bool(
    "matmuls_alone",
    True,
    "Also time every matmul of the compiled step alone, at its own shape (a lower bound on "
    "the step as far as its matmuls go, unless they overlap).",
)
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "profile.jsonl"), "JSONL to append."
)
flags.mark_flag_as_required("config")


def _cpu_ghz() -> float:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        return float(re.search(r"cpu MHz\s*:\s*([\d.]+)", text).group(1)) / 1000
    except (OSError, AttributeError):
        return 2.0


def _inventory(hlo: str) -> dict[str, int]:
    """Counts of the instructions that decide a CPU step's speed, in the optimized HLO."""
    count = collections.Counter()
    for line in hlo.splitlines():
        match = re.search(r"=\s*\S+\s+(\w[\w-]*)\(", line)
        if not match:
            continue
        op = match.group(1)
        if op in ("fusion", "dot", "copy", "transpose", "reduce", "convolution", "custom-call"):
            count[op] += 1
        if op == "fusion" and "kind=kOutput" in line:
            count["fusion(output)"] += 1
    count["all instructions"] = sum(1 for line in hlo.splitlines() if " = " in line)
    return dict(count)


def _timed(fn, args, steps, repeats) -> tuple[float, object]:
    compiled = jax.jit(fn).lower(*args).compile()
    return benchmark.median_seconds(lambda: compiled(*args), repeats, steps), compiled


def profile_method(config, dataset, method: str, mode: str, peak_gflops: float) -> list[dict]:
    config.unlock()
    config.balancing.method = method
    config.balancing.task_gradients = mode
    config.lock()
    trainer = Trainer(config, dataset)
    model, tasks = trainer.model, trainer.train_tasks
    state = trainer.init_state()
    batch = parallel.to_global_batch(next(trainer.train_iterator()), trainer.mesh)
    rngs = {"dropout": jax.random.PRNGKey(0)}

    def forward(params, batch):
        logits = model.apply({"params": params}, batch["features"], train=True, rngs=rngs)
        return _mean_task_losses(tasks, logits, batch, rngs)

    def backward(params, batch):
        return jax.grad(lambda p: jnp.sum(forward(p, batch)))(params)

    def task_grads(params, batch):
        embedding, trunk, rest = _split_params(params)
        x = _embed(model, embedding, batch["features"], train=True, rngs=rngs)
        _, vjp_fn = jax.vjp(
            lambda tr: _losses_from_embedded(
                model, tasks, batch, tr, rest, x, train=True, rngs=rngs
            ),
            trunk,
        )
        grads = _per_task_trunk_grads(vjp_fn, len(tasks), mode)
        flat = jnp.concatenate([g.reshape(len(tasks), -1) for g in jax.tree.leaves(grads)], axis=1)
        return flat @ flat.T

    stages = {"forward": forward, "backward": backward}
    if trainer.rule.needs_gramian:
        stages["task_grads"] = task_grads
    rows = []
    for name, fn in stages.items():
        seconds, compiled = _timed(fn, (state.params, batch), _STEPS.value, _REPEATS.value)
        rows.append((name, seconds, compiled))
    timing = benchmark.time_train_step(
        trainer.train_step, state, batch, _STEPS.value, _REPEATS.value
    )
    step, step_seconds = timing["compiled"], timing["step_ms"] / 1e3
    rows.append(("step", step_seconds, step))

    def row(stage: str, seconds: float, flops: float, **extra) -> dict:
        return {
            "method": method,
            "task_gradients": mode if trainer.rule.needs_gramian else None,
            "stage": stage,
            "ms": seconds * 1e3,
            "share_of_step": seconds / step_seconds,
            "examples_per_s": _BATCH.value / seconds,
            "gflop": flops / 1e9,
            "flop_per_example": flops / _BATCH.value,
            **extra,
            "achieved_gflops": flops / seconds / 1e9,
            "share_of_peak": flops / seconds / 1e9 / peak_gflops,
        }

    out = []
    for name, seconds, compiled in rows:
        flops, bytes_accessed = benchmark.flops_and_bytes(compiled)
        out.append(row(name, seconds, flops, mbytes_accessed=bytes_accessed / 2**20))
    out[-1]["hlo"] = _inventory(step.as_text())
    if _MATMULS.value:
        alone = benchmark.time_matmuls_alone(
            benchmark.matmuls(step.as_text()), _REPEATS.value, _STEPS.value
        )
        matmuls = [
            {
                "lhs": r["matmul"].lhs,
                "rhs": r["matmul"].rhs,
                "contracting": r["matmul"].contracting,
                "batch": r["matmul"].batch,
                "count": r["count"],
                "mflop": r["flops"] / 1e6,
                "us": r["seconds"] * 1e6,
            }
            for r in alone
        ]
        seconds = sum(r["count"] * r["seconds"] for r in alone)
        flops = sum(r["count"] * r["flops"] for r in alone)
        out.append(row("matmuls alone", seconds, flops, matmuls=matmuls))
    return out


def main(argv):
    del argv
    config = _CONFIG.value
    config.unlock()
    config.train.batch_size = _BATCH.value
    config.lock()
    peak = _PEAK.value or (os.cpu_count() or 1) * _cpu_ghz() * 32
    dataset = load_run_dataset(config)
    common = {
        "benchmark": "profile",
        "config": config.data.name,
        "trunk": config.model.trunk,
        "batch_size": _BATCH.value,
        "peak_gflops": peak,
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "commit": reporting.git_commit(),
    }
    rows = []
    for method in _METHODS.value:
        gradient_method = balancing.make_rule(method).needs_gramian if method != "static" else False
        for mode in _MODES.value if gradient_method else ["batched"]:
            rows += profile_method(config, dataset, method, mode, peak)
    print(f"peak {peak:.0f} GFLOP/s; batch {_BATCH.value}")
    print(f"{'method':<19} {'stage':<11} {'ms':>7} {'of step':>7} {'ex/s':>9} "
          f"{'MFLOP/ex':>8} {'GFLOP/s':>8} {'of peak':>7}")  # fmt: skip
    for r in rows:
        print(
            f"{r['method'] + (':' + r['task_gradients'] if r['task_gradients'] else ''):<19} "
            f"{r['stage']:<11} {r['ms']:>7.2f} {r['share_of_step']:>7.2f} "
            f"{r['examples_per_s']:>9.0f} {r['flop_per_example'] / 1e6:>8.3f} "
            f"{r['achieved_gflops']:>8.1f} {r['share_of_peak']:>7.1%}"
        )
        if "hlo" in r:
            print(f"{'':<19} step HLO: {r['hlo']}")
        for m in r.get("matmuls", []):
            print(
                f"{'':<19} {m['count']:>2} x {str(m['lhs']):>14} . {str(m['rhs']):<14} "
                f"contract {m['contracting']} {m['mflop']:7.1f} MFLOP {m['us']:7.1f} us"
            )
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:
            line = json.dumps({**common, **r})
            f.write(line + "\n")
            print(line)


if __name__ == "__main__":
    app.run(main)
