"""The combiner contract: task gradients with a leading task axis in, one update out.

Every method here is a *weighting rule*: from the task losses, the T x T Gramian of task
gradients (for gradient methods) and its own state, it picks weights ``w`` (T,), and the
update is ``sum_t w_t g_t``. Loss-weighting methods never look at the Gramian, so a trainer
can apply their weights to the losses and take one backward pass; gradient methods see only
the Gramian, so under data parallelism (where the Gramian is that of the global batch) every
device takes the same step.

``as_transform`` wraps a rule as an ``optax.GradientTransformationExtraArgs`` whose
``update(task_grads, state, params, task_losses=...)`` accepts any pytree whose leaves carry
the task axis first, so ``optax.chain(make('pcgrad', num_tasks=3), optax.adam(1e-3))`` works
on a raw (T, d) task-gradient matrix as well as on a network's parameter tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class CombinerState(NamedTuple):
    """What a combiner carries between steps (and checkpoints)."""

    weights: jax.Array  # (T,) the weights used at the last step, for diagnostics
    inner: Any  # the method's own state (moving averages, loss history, logits ...)
    key: jax.Array  # PRNG key for randomised methods (RLW, PCGrad's task order)
    step: jax.Array


# (inner state, task losses (T,) or None, Gramian (T, T) or None, key) -> (weights, inner)
WeightsFn = Callable[[Any, jax.Array | None, jax.Array | None, jax.Array], tuple[jax.Array, Any]]
# (inner, task-leading grads, task losses, key)
#   -> (update, effective weights (T,), weights for the other groups' task gradients, inner)
CombineFn = Callable[[Any, Any, jax.Array | None, jax.Array], tuple[Any, jax.Array, jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class WeightingRule:
    """One balancing method.

    Attributes:
      name: the method's name in ``make``.
      needs_gramian: whether ``weights`` reads the Gramian of task gradients (a gradient
        method: per-task gradients of the routed parameter group are needed).
      needs_losses: whether ``weights`` reads the task losses.
      init: ``num_tasks -> inner state``.
      weights: see ``WeightsFn``.
      weights_whole_model: a gradient method whose weights also scale the task gradients of
        the parameters outside the routed group (GradNorm weights the whole loss); others
        leave those groups to the plain sum.
      combine: for the rare method whose update is not a weighting of the current task
        gradients (DB-MTL combines moving averages of them); replaces ``weights``.
      init_needs_params: ``init`` takes ``(num_tasks, params)``, params being the routed
        group's (without the task axis), to shape per-parameter state.
    """

    name: str
    needs_gramian: bool
    needs_losses: bool
    init: Callable[[int], Any]
    weights: WeightsFn | None
    weights_whole_model: bool = False
    combine: CombineFn | None = None
    init_needs_params: bool = False


def gramian(task_grads: Any) -> jax.Array:
    """``G[s, t] = <g_s, g_t>`` summed over every leaf of a task-leading pytree, (T, T)."""
    leaves = jax.tree.leaves(task_grads)
    flat = [leaf.reshape(leaf.shape[0], -1).astype(jnp.float32) for leaf in leaves]
    return sum(f @ f.T for f in flat)


def weighted_sum(task_grads: Any, weights: jax.Array) -> Any:
    """``sum_t w_t g_t`` for every leaf; the task axis disappears. ``float0`` leaves (the
    cotangents of integer inputs, e.g. an LM trunk's token ids) stay ``float0``."""

    def combine(g):
        if g.dtype == jax.dtypes.float0:
            return np.zeros(g.shape[1:], jax.dtypes.float0)
        return jnp.tensordot(weights.astype(g.dtype), g, axes=1)

    return jax.tree.map(combine, task_grads)


def num_tasks_of(task_grads: Any) -> int:
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(task_grads)}
    if len(sizes) != 1 or None in sizes:
        shapes = [leaf.shape for leaf in jax.tree.leaves(task_grads)]
        raise ValueError(f"every task-gradient leaf needs the same leading task axis; got {shapes}")
    return sizes.pop()


def init_state(
    rule: WeightingRule, num_tasks: int, seed: int = 0, params: Any = None
) -> CombinerState:
    """A fresh state; ``params`` (the routed group's) only for rules that shape state by them."""
    if rule.init_needs_params and params is None:
        raise ValueError(f"balancing method {rule.name!r} needs the routed parameters to init")
    return CombinerState(
        weights=jnp.ones((num_tasks,), jnp.float32),
        inner=rule.init(num_tasks, params) if rule.init_needs_params else rule.init(num_tasks),
        key=jax.random.PRNGKey(seed),
        step=jnp.zeros((), jnp.int32),
    )


def compute_weights(
    rule: WeightingRule,
    state: CombinerState,
    task_losses: jax.Array | None,
    gram: jax.Array | None,
) -> tuple[jax.Array, CombinerState]:
    """One step of the rule: the weights to apply now, and the next state."""
    if rule.needs_losses and task_losses is None:
        raise ValueError(f"balancing method {rule.name!r} needs task_losses=... in update()")
    if rule.needs_gramian and gram is None:
        raise ValueError(f"balancing method {rule.name!r} needs task gradients (a Gramian)")
    key, sub = jax.random.split(state.key)
    if task_losses is not None:
        task_losses = jax.lax.stop_gradient(jnp.asarray(task_losses, jnp.float32))
    weights, inner = rule.weights(state.inner, task_losses, gram, sub)
    weights = weights.astype(jnp.float32)
    return weights, CombinerState(weights, inner, key, state.step + 1)


def combine_task_grads(
    rule: WeightingRule, state: CombinerState, task_grads: Any, task_losses: jax.Array | None
) -> tuple[Any, jax.Array, jax.Array, CombinerState]:
    """Task-leading gradients of the routed group -> ``(update, weights, other-group weights,
    next state)``; what both the optax transform and the trainer call."""
    t = num_tasks_of(task_grads)
    if rule.combine is not None:
        if rule.needs_losses and task_losses is None:
            raise ValueError(f"balancing method {rule.name!r} needs task_losses=... in update()")
        key, sub = jax.random.split(state.key)
        losses = None if task_losses is None else jax.lax.stop_gradient(task_losses)
        update, weights, others, inner = rule.combine(state.inner, task_grads, losses, sub)
        return update, weights, others, CombinerState(weights, inner, key, state.step + 1)
    gram = gramian(task_grads) if rule.needs_gramian else None
    weights, state = compute_weights(rule, state, task_losses, gram)
    others = weights if (rule.weights_whole_model or not rule.needs_gramian) else jnp.ones((t,))
    return weighted_sum(task_grads, weights), weights, others, state


def as_transform(
    rule: WeightingRule, num_tasks: int, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
    """The rule as an optax transform over task-leading gradient pytrees."""

    def init_fn(params: Any) -> CombinerState:
        return init_state(rule, num_tasks, seed, params if rule.init_needs_params else None)

    def update_fn(task_grads, state, params=None, *, task_losses=None, **extra_args):
        del params, extra_args
        t = num_tasks_of(task_grads)
        if t != num_tasks:
            raise ValueError(
                f"{rule.name}: task gradients have {t} tasks on their leading axis, but the "
                f"combiner was made for num_tasks={num_tasks}"
            )
        update, _, _, state = combine_task_grads(rule, state, task_grads, task_losses)
        return update, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def task_sum() -> optax.GradientTransformationExtraArgs:
    """Sums task-leading gradients over the task axis: the "plain sum" for parameter groups
    that no combiner should touch (embeddings, heads) inside an ``optax.partition``."""

    def update_fn(task_grads, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: g.sum(axis=0), task_grads), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def normalized(gram: jax.Array) -> jax.Array:
    """The Gramian divided by its mean diagonal: same argmins, better conditioned solvers."""
    scale = jnp.maximum(jnp.mean(jnp.diag(gram)), 1e-20)
    return gram / scale
