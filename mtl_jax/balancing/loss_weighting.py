"""Methods that only reweight task losses: one backward pass, no per-task gradients.

Each factory returns a ``WeightingRule`` whose weights depend on the losses and the rule's
own state, never on gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.balancing.core import WeightingRule

_EPS = 1e-8


def _task_count_state(t: int) -> jax.Array:
    # Stateless rules keep a (T,) placeholder: it tells them T when no losses are given.
    return jnp.zeros((t,), jnp.float32)


def ew() -> WeightingRule:
    """Equal weighting: the plain sum of task losses."""
    return WeightingRule(
        "ew", False, False, _task_count_state, lambda s, losses, gram, key: (jnp.ones_like(s), s)
    )


def static(weights: Sequence[float]) -> WeightingRule:
    """Fixed per-task weights, in task order."""
    w = jnp.asarray(weights, jnp.float32)
    if w.ndim != 1 or bool(jnp.any(w < 0)):
        raise ValueError(f"static weights must be a 1-D list of values >= 0, got {weights}")

    def init(t):
        if t != w.shape[0]:
            raise ValueError(f"static: {w.shape[0]} weights given for {t} tasks")
        return ()

    return WeightingRule("static", False, False, init, lambda s, losses, gram, key: (w, s))


def rlw() -> WeightingRule:
    """Random loss weighting (Lin et al. 2022): ``softmax(N(0, I))`` drawn afresh each step."""

    def weights(state, losses, gram, key):
        return jax.nn.softmax(jax.random.normal(key, state.shape)), state

    return WeightingRule("rlw", False, False, _task_count_state, weights)


class DWAState(NamedTuple):
    window_sum: jax.Array  # (T,) losses summed over the current window
    window_count: jax.Array
    last: jax.Array  # (T,) mean loss of the previous window
    before_last: jax.Array  # (T,) and of the one before it
    windows_done: jax.Array


def dwa(temperature: float = 2.0, period: int = 100) -> WeightingRule:
    """Dynamic weight average (Liu et al., CVPR 2019).

    ``w_k = T softmax(r / temperature)_k`` with ``r_k = L_k(t-1) / L_k(t-2)``, where L are
    mean losses over the two previous windows of ``period`` steps (the paper's epochs); the
    first two windows use equal weights.
    """
    if period < 1 or temperature <= 0:
        raise ValueError(f"dwa needs period >= 1 and temperature > 0, got {period}, {temperature}")

    def init(t):
        z = jnp.zeros((t,), jnp.float32)
        return DWAState(z, jnp.zeros((), jnp.int32), z, z, jnp.zeros((), jnp.int32))

    def weights(state, losses, gram, key):
        t = losses.shape[0]
        ratio = state.last / jnp.maximum(state.before_last, _EPS)
        w = jnp.where(state.windows_done >= 2, t * jax.nn.softmax(ratio / temperature), 1.0)
        total, count = state.window_sum + losses, state.window_count + 1
        closed = count >= period
        state = DWAState(
            window_sum=jnp.where(closed, 0.0, total),
            window_count=jnp.where(closed, 0, count),
            last=jnp.where(closed, total / count, state.last),
            before_last=jnp.where(closed, state.last, state.before_last),
            windows_done=state.windows_done + closed.astype(jnp.int32),
        )
        return w, state

    return WeightingRule("dwa", False, True, init, weights)


class LearnedLogitsState(NamedTuple):
    values: jax.Array  # (T,) the learned parameters (UW: log variances; FAMO: logits)
    opt_state: optax.OptState
    prev_losses: jax.Array  # (T,) FAMO only
    has_prev: jax.Array


def _learned_init(optimizer: optax.GradientTransformation):
    def init(t):
        values = jnp.zeros((t,), jnp.float32)
        return LearnedLogitsState(
            values, optimizer.init(values), jnp.zeros((t,), jnp.float32), jnp.zeros((), bool)
        )

    return init


def uw(learning_rate: float = 1e-3) -> WeightingRule:
    """Uncertainty weighting (Kendall et al., CVPR 2018).

    Minimises ``sum_t exp(-s_t) L_t / 2 + s_t / 2`` with ``s_t = log sigma_t^2`` learned by
    its own Adam; the task weights are ``exp(-s_t) / 2`` (0.5 at the start). The paper
    learns ``s`` with the network's optimizer; the default rate is of the order of the
    networks' (1e-3): at 1e-2 the weight of a rare-event task (e-commerce purchases) grows
    so fast that its logloss ends worse than the label-blind predictor.
    """
    optimizer = optax.adam(learning_rate)

    def weights(state, losses, gram, key):
        w = 0.5 * jnp.exp(-state.values)
        grad_s = 0.5 - 0.5 * jnp.exp(-state.values) * losses
        updates, opt_state = optimizer.update(grad_s, state.opt_state, state.values)
        values = optax.apply_updates(state.values, updates)
        return w, state._replace(values=values, opt_state=opt_state)

    return WeightingRule("uw", False, True, _learned_init(optimizer), weights)


def imtl_l(learning_rate: float = 1e-3) -> WeightingRule:
    """Loss part of impartial MTL (Liu et al., ICLR 2021): task t's loss becomes
    ``exp(s_t) L_t - s_t`` with ``s_t`` learned by its own Adam (the paper learns it with the
    network), so the weight ``exp(s_t)`` tends to ``1 / L_t``: every task's scaled loss
    settles at 1, whatever its units. Starts at weight 1 (``s = 0``)."""
    optimizer = optax.adam(learning_rate)

    def weights(state, losses, gram, key):
        w = jnp.exp(state.values)
        grad_s = w * losses - 1.0
        updates, opt_state = optimizer.update(grad_s, state.opt_state, state.values)
        values = optax.apply_updates(state.values, updates)
        return w, state._replace(values=values, opt_state=opt_state)

    return WeightingRule("imtl_l", False, True, _learned_init(optimizer), weights)


def geometric_mean() -> WeightingRule:
    """Geometric loss strategy (GLS; Chennupati et al., CVPR-W 2019): minimise the geometric
    mean of the task losses, ``(prod_t L_t)^(1/T)``, whose gradient weights task t's
    gradient by ``GM / (T L_t)``: a task whose loss is small relative to the others pulls
    harder, and the losses' units cancel."""

    def weights(state, losses, gram, key):
        safe = jnp.maximum(losses, _EPS)
        gm = jnp.exp(jnp.mean(jnp.log(safe)))
        return gm / (safe.shape[0] * safe), state

    return WeightingRule("geometric_mean", False, True, _task_count_state, weights)


class STCHState(NamedTuple):
    loss_sum: jax.Array  # (T,) losses summed over the warm-up steps
    step: jax.Array


def stch(mu: float = 1.0, warmup_steps: int = 100) -> WeightingRule:
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024), as LibMTL runs it: for
    ``warmup_steps`` steps train on ``sum_t log L_t`` (weights ``1 / L_t``) while averaging
    the losses into a nadir point ``n``; then minimise
    ``T mu logsumexp(log(L_t / n_t) / mu)``, whose weights ``T softmax(log(L / n) / mu)_t /
    L_t`` go mostly to the task furthest above its nadir (mu -> 0: the worst task only)."""
    if mu <= 0 or warmup_steps < 1:
        raise ValueError(f"stch needs mu > 0 and warmup_steps >= 1, got {mu}, {warmup_steps}")

    def init(t):
        return STCHState(jnp.zeros((t,), jnp.float32), jnp.zeros((), jnp.int32))

    def weights(state, losses, gram, key):
        t = losses.shape[0]
        safe = jnp.maximum(losses, _EPS)
        warming = state.step < warmup_steps
        nadir = state.loss_sum / warmup_steps
        relative = jnp.log(safe / jnp.maximum(nadir, _EPS))
        after = t * jax.nn.softmax(relative / mu) / safe
        w = jnp.where(warming, 1.0 / safe, after)
        loss_sum = jnp.where(warming, state.loss_sum + losses, state.loss_sum)
        return w, STCHState(loss_sum, state.step + 1)

    return WeightingRule("stch", False, True, init, weights)


def famo(learning_rate: float = 0.025, gamma: float = 1e-3, min_loss: float = 0.0) -> WeightingRule:
    """Fast adaptive multitask optimisation (Liu et al., NeurIPS 2023).

    The step follows the gradient of ``sum_t z_t log(L_t - min_loss) / c`` with
    ``z = softmax(logits)`` and ``c = sum_t z_t / (L_t - min_loss)``, i.e. task weights
    ``z_t / (c (L_t - min_loss))``. The logits then move against ``J_softmax^T delta`` where
    ``delta_t`` is task t's log-loss decrease, with Adam and L2 ``gamma`` as in the paper's
    code. The decrease is measured between consecutive steps (so on consecutive batches);
    the paper's code can also re-evaluate the same batch after the step.
    """
    optimizer = optax.chain(optax.add_decayed_weights(gamma), optax.adam(learning_rate))

    def weights(state, losses, gram, key):
        shifted = losses - min_loss + _EPS
        z = jax.nn.softmax(state.values)
        delta = jnp.log(state.prev_losses - min_loss + _EPS) - jnp.log(shifted)
        grad_logits = z * delta - z * jnp.dot(z, delta)  # J_softmax^T delta
        updates, opt_state = optimizer.update(grad_logits, state.opt_state, state.values)
        values = jnp.where(state.has_prev, optax.apply_updates(state.values, updates), state.values)
        opt_state = jax.tree.map(
            lambda new, old: jnp.where(state.has_prev, new, old), opt_state, state.opt_state
        )
        z = jax.nn.softmax(values)
        w = z / shifted / jnp.sum(z / shifted)
        return w, LearnedLogitsState(values, opt_state, losses, jnp.ones((), bool))

    return WeightingRule("famo", False, True, _learned_init(optimizer), weights)
