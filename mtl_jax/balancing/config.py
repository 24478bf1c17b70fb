"""The ``balancing`` section of a config: a method name plus every method's keyword arguments.

Each kwarg defaults to None ("the method's own default"), so the locked config knows every
key (typos fail) and ``--config.balancing.c=0.4`` sets CAGrad's ``c`` from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from mtl_jax.balancing import make_rule, method_kwargs, names
from mtl_jax.balancing.core import WeightingRule


def _all_kwargs() -> dict[str, type]:
    types: dict[str, type] = {}
    for name in names():
        for kwarg, default in method_kwargs(name).items():
            if kwarg == "weights":  # static's weights live in their own per-task section
                continue
            types.setdefault(kwarg, float if isinstance(default, float) else int)
    return types


def default_config(task_names: Sequence[str], method: str = "ew") -> ml_collections.ConfigDict:
    """``method``, per-task ``weights`` (for ``static``), and every method kwarg set to None."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.weights = ml_collections.ConfigDict({t: 1.0 for t in task_names})
    # Gradient methods: a regex over trunk parameter paths to take the Gramian over (e.g.
    # 'experts/(kernel|bias)_1$', the last expert layer); '' = the whole trunk (exact).
    c.gramian_params = ""
    # Gradient methods: how the T per-task trunk gradients are formed, "batched" (one vmap
    # over the task cotangents), "sequential" (T backward passes), "stacked" (MMoE without
    # dropout: one hand-written pass with a task axis, models/stacked_grads.py) or "auto"
    # (stacked where it applies, else batched); same values up to rounding, speed
    # depends on the model and backend (experiments/bench_task_grads.py).
    c.task_gradients = "auto"
    # Gradient methods: where the Gramian of task gradients is taken, "trunk" (the trunk's
    # parameters, exact, or those gramian_params selects) or "representation" (the trunk's
    # output each tower reads, as LibMTL's rep_grad and MultiBalance: about EW's cost).
    c.gramian_at = "trunk"
    for kwarg, kind in sorted(_all_kwargs().items()):
        c[kwarg] = ml_collections.FieldReference(None, field_type=kind)
    return c


def rule_from_config(
    c: ml_collections.ConfigDict,
    task_names: Sequence[str],
    run_tasks: Sequence[str] | None = None,
) -> WeightingRule:
    """The configured rule over ``task_names`` (a stage may train a subset of the run's
    ``run_tasks``, default the same); a kwarg set for a method that does not take it is an
    error, and so is a static weight other than the default 1 for a task the run lacks
    (weights of tasks a config file lists but the run dropped stay at 1 and are ignored)."""
    accepted = method_kwargs(c.method)
    given = {k: c[k] for k in _all_kwargs() if c.get(k) is not None}
    foreign = sorted(set(given) - set(accepted))
    if foreign:
        raise ValueError(
            f"balancing.{foreign[0]} is set, but method {c.method!r} takes "
            f"{sorted(k for k in accepted if k != 'weights') or 'no kwargs'}"
        )
    if c.method == "static":
        known = set(run_tasks if run_tasks is not None else task_names)
        unknown = sorted(t for t, w in c.weights.items() if t not in known and float(w) != 1.0)
        if unknown:
            raise ValueError(
                f"balancing.weights sets weights for tasks {unknown} that this run does not "
                f"train; tasks: {sorted(known)}"
            )
        given["weights"] = [float(c.weights.get(t, 1.0)) for t in task_names]
    return make_rule(c.method, **given)
