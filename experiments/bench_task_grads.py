"""Per-task trunk gradients, three ways: is the stacked-cotangent form the cheap one?

  python experiments/bench_task_grads.py --config=configs/ecommerce.py --batch_size=1024

Exact whole-trunk gradient methods need each task's gradient of the trunk parameters. This
times, on one batch already on device, programs that take the trunk forward and then:

  one_backward  one backward of all tasks' cotangents summed (what equal weights costs)
  batched       T backward passes as one ``vmap`` over the tasks (balancing.task_gradients)
  sequential    T backward passes one after another (balancing.task_gradients=sequential)
  stacked       MMoE without dropout: the forward and backward written by hand with the
                task axis next to the example axis (balancing.task_gradients=stacked,
                mtl_jax/models/stacked_grads.py)

``batched`` and ``sequential`` are the library's own routine (``step._per_task_trunk_grads``);
``stacked`` is checked against them (relative difference, printed) before it is timed. The
cotangents are fixed random arrays on each task's representation (the cost does not depend on
their values). Prints a table and one JSON line per program, and appends them to
experiments/results/task_grads.jsonl.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import benchmark, parallel, reporting
from mtl_jax.models import stacked_grads
from mtl_jax.models.model import MultiTaskModel
from mtl_jax.step import _embed, _per_task_trunk_grads, _split_params
from mtl_jax.train import Trainer, load_run_dataset

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Calls per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "task_grads.jsonl"), "JSONL to append."
)
flags.mark_flag_as_required("config")


def main(argv):
    del argv
    config = _CONFIG.value
    config.unlock()
    config.train.batch_size = _BATCH.value
    config.lock()
    trainer = Trainer(config, load_run_dataset(config))
    model, num_tasks = trainer.model, len(trainer.train_tasks)
    params = trainer.init_state().params
    batch = parallel.to_global_batch(next(trainer.train_iterator()), trainer.mesh)
    embedding, trunk, _ = _split_params(params)
    x = jax.jit(lambda e: _embed(model, e, batch["features"]))(embedding)

    def represent(trunk, x):
        return model.apply({"params": {"trunk": trunk}}, x, method=MultiTaskModel.represent)

    reps = jax.eval_shape(represent, trunk, x)
    keys = jax.random.split(jax.random.PRNGKey(0), num_tasks)
    cotangents = jnp.stack(
        [jax.random.normal(k, r.shape) for k, r in zip(keys, reps, strict=True)], 1
    )

    def per_task_vjp(trunk, x):
        """A vjp whose T outputs are <rep_t, cotangent_t>: its unit cotangents give task
        t's trunk gradient, as the train step's task-loss vjp does."""
        return jax.vjp(
            lambda tr: jnp.stack(
                [jnp.vdot(r, cotangents[:, t]) for t, r in enumerate(represent(tr, x))]
            ),
            trunk,
        )[1]

    def one_backward(trunk, x):
        return jax.vjp(lambda tr: represent(tr, x), trunk)[1](list(cotangents.swapaxes(0, 1)))

    programs = {
        "one_backward": one_backward,
        "batched": lambda tr, x: _per_task_trunk_grads(per_task_vjp(tr, x), num_tasks, "batched"),
        "sequential": lambda tr, x: _per_task_trunk_grads(
            per_task_vjp(tr, x), num_tasks, "sequential"
        ),
    }
    if stacked_grads.stacked_problem(config.model, "") is None:

        def stacked(trunk, x):
            _, cache = stacked_grads.mmoe_forward(trunk, x, num_tasks)
            return stacked_grads.mmoe_task_grads(trunk, x, cache, cotangents)[0]

        programs["stacked"] = stacked
    compiled = {name: jax.jit(fn).lower(trunk, x).compile() for name, fn in programs.items()}
    reference = compiled["batched"](trunk, x)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(reference))
    rows = []
    seconds = benchmark.interleaved_median_seconds(
        {name: (lambda c=c: c(trunk, x)) for name, c in compiled.items()},
        _REPEATS.value,
        _STEPS.value,
    )
    for name, c in compiled.items():
        difference = None
        if name != "one_backward":
            out = c(trunk, x)
            difference = max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(reference), strict=True)
            ) / max(scale, 1e-30)
            if difference > 1e-4:
                raise AssertionError(f"{name} differs from batched by {difference:.2e} (relative)")
        flops, _ = benchmark.flops_and_bytes(c)
        rows.append(
            {
                "benchmark": "task_grads",
                "config": config.data.name,
                "trunk": config.model.trunk,
                "trunk_hidden": list(config.model.trunk_hidden),
                "tasks": num_tasks,
                "batch_size": _BATCH.value,
                "program": name,
                "ms": seconds[name] * 1e3,
                "mflop": flops / 1e6,
                "gflop_per_s": flops / seconds[name] / 1e9,
                "max_relative_difference_vs_batched": difference,
                "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
                "jax": jax.__version__,
                "commit": reporting.git_commit(),
            }
        )
    print(f"{'program':<13} {'ms':>8} {'MFLOP':>8} {'GFLOP/s':>8} {'x one':>6}  rel. diff")
    base = rows[0]["ms"]
    for r in rows:
        diff = r["max_relative_difference_vs_batched"]
        print(
            f"{r['program']:<13} {r['ms']:>8.3f} {r['mflop']:>8.1f} {r['gflop_per_s']:>8.1f} "
            f"{r['ms'] / base:>6.2f}  {'-' if diff is None else f'{diff:.1e}'}"
        )
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:
            line = json.dumps(r)
            f.write(line + "\n")
            print(line)


if __name__ == "__main__":
    app.run(main)
