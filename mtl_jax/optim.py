"""Learning-rate schedules, parameter-group labels and the partitioned optimizer.

Parameters are grouped by the top-level module that owns them, so each group gets the
optimizer that suits it: embedding tables (sparse rows, no weight decay) and dense layers
(adamw). Later capabilities (gradient combiners on the shared trunk, frozen groups) plug
into the same partition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

GROUPS = ("embeddings", "trunk", "heads", "text", "text_encoder", "frozen")


def _key(entry: Any) -> str:
    return entry.key if hasattr(entry, "key") else str(entry)


def group_of(path: tuple[Any, ...], trainable_text_layers: frozenset[str] = frozenset()) -> str:
    """Parameter group of a parameter path like ``('trunk', 'experts', 'kernel_0')``.

    Pretrained text tables (vectors or token ids) are ``frozen`` (never updated), and so is
    a fine-tuned text encoder except its layers named in ``trainable_text_layers``
    (``text_encoder``); the projections that read the text are dense layers of group
    ``text``.
    """
    top = _key(path[0])
    if top == "embedding":
        sub = _key(path[1]) if len(path) > 1 else ""
        if sub.startswith(("text_table_", "text_tokens_")):
            return "frozen"
        if sub == "text_encoder":
            return "text_encoder" if _key(path[2]) in trainable_text_layers else "frozen"
        if sub.startswith("text_proj_"):
            return "text"
        return "embeddings"
    if top in ("trunk", "trunk_task"):  # trunk_task: an LM trunk's per-task adapters
        return "trunk"
    if top.startswith("towers_"):
        return "heads"
    raise ValueError(f"parameter {'/'.join(map(str, path))} belongs to no group; groups: {GROUPS}")


def param_labels(
    params: Any,
    trainable_text_layers: frozenset[str] = frozenset(),
    frozen_groups: frozenset[str] = frozenset(),
    frozen_towers: frozenset[str] = frozenset(),
) -> Any:
    """A pytree like ``params`` with each leaf replaced by its group name; groups in
    ``frozen_groups`` and the towers of tasks in ``frozen_towers`` become ``frozen``."""

    def label(path, _):
        group = group_of(path, trainable_text_layers)
        if group in frozen_groups:
            return "frozen"
        if group == "heads" and _key(path[0]).removeprefix("towers_") in frozen_towers:
            return "frozen"
        return group

    return jax.tree_util.tree_map_with_path(label, params)


SCHEDULES = ("warmup_cosine", "linear", "constant", "exponential", "step", "rsqrt")


def schedule(peak: float, warmup_steps: int, total_steps: int, c: Any = None) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then ``c.schedule`` (the
    optim config section; None: the default) until ``total_steps``:

    - ``warmup_cosine`` (default): cosine decay to ``end_fraction`` x peak;
    - ``linear``: linear decay to ``end_fraction`` x peak;
    - ``constant``: peak;
    - ``exponential``: x ``decay_rate`` every ``decay_steps`` steps, continuously (0: over
      the whole decay, so the run ends at ``decay_rate`` x peak);
    - ``step``: x ``step_factor`` at each of ``step_boundaries`` (fractions of the steps
      after warmup), as in the ResNet recipe;
    - ``rsqrt``: peak x sqrt(w / (w + s)) at s steps after warmup, w = max(warmup, 1): the
      Transformer's inverse square root.
    """
    name = c.get("schedule", "warmup_cosine") if c is not None else "warmup_cosine"
    end_fraction = c.get("end_fraction", 0.01) if c is not None else 0.01
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay = max(total_steps - warmup_steps, 1)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
            end_value=peak * end_fraction,
        )
    if name == "linear":
        after = optax.linear_schedule(peak, peak * end_fraction, decay)
    elif name == "constant":
        after = optax.constant_schedule(peak)
    elif name == "exponential":
        after = optax.exponential_decay(peak, c.decay_steps or decay, c.decay_rate)
    elif name == "step":
        after = optax.piecewise_constant_schedule(
            peak, {max(1, round(f * decay)): c.step_factor for f in c.step_boundaries}
        )
    elif name == "rsqrt":
        w = max(warmup_steps, 1)
        after = lambda count: peak * jnp.sqrt(w / (w + jnp.asarray(count, jnp.float32)))
    else:
        raise ValueError(f"unknown optim.schedule {name!r}; valid: {SCHEDULES}")
    if warmup_steps == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), after], [warmup_steps]
    )


EMBEDDING_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd", "adam")


class RowwiseRssState(NamedTuple):
    sum_of_squares: Any  # per table: (rows,), one accumulator per row


def scale_by_rowwise_rss(
    initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> optax.GradientTransformation:
    """Row-wise Adagrad's scaling (as in TorchRec's and TPU embedding's row-wise Adagrad):
    one accumulator per table row, the running sum of the row gradient's mean square, so the
    state is a vector per table instead of a table's copy. A row with zero gradient keeps
    its accumulator and gets a zero update."""

    def init_fn(params):
        return RowwiseRssState(
            jax.tree.map(
                lambda p: jnp.full(p.shape[:1], initial_accumulator_value, p.dtype), params
            )
        )

    def update_fn(updates, state, params=None):
        del params
        sums = jax.tree.map(
            lambda g, t: t + jnp.mean(jnp.square(g), axis=tuple(range(1, g.ndim))),
            updates,
            state.sum_of_squares,
        )
        scaled = jax.tree.map(
            lambda g, t: (
                g
                * jnp.where(t > 0, jax.lax.rsqrt(t + eps), 0.0).reshape((-1,) + (1,) * (g.ndim - 1))
            ),
            updates,
            sums,
        )
        return scaled, RowwiseRssState(sums)

    return optax.GradientTransformation(init_fn, update_fn)


def in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` with float32 math and state whatever the parameters' storage dtype: a
    bfloat16 table's gradient and parameters are cast up before ``inner`` sees them, its
    state (Adagrad's sums, Adam's moments) is float32, and ``optax.apply_updates`` rounds the
    float32 sum back to the table's dtype. The state has ``inner``'s structure."""

    def up(tree):
        return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)

    def update(updates, state, params=None):
        return inner.update(up(updates), state, None if params is None else up(params))

    return optax.GradientTransformation(lambda params: inner.init(up(params)), update)


class LazyL2State(NamedTuple):
    inner: Any  # the table optimizer's state
    count: jax.Array  # steps taken
    synced: Any  # per table, (rows,): the first step whose L2 decay the row has not had


def _caught_up(w, synced, acc, t, sums, strength):
    """Rows of ``w`` after the L2 pulls of steps ``synced .. t - 1`` (see lazy_coupled_l2):
    the product of ``1 - lr_s * c`` over those steps, ``c = strength / sqrt(acc)``, as
    ``exp(-sum_k c^k / k * sum_s lr_s^k)`` to the fourth power (``sums[k - 1, n]`` holds the
    sum of ``lr_s^k`` over steps s < n; the fifth-order term is below 1e-7 per step)."""
    synced = jnp.clip(synced, 0, t)
    missed = sums[:, t][:, None] - sums[:, synced]  # (4, rows)
    shape = (-1,) + (1,) * (w.ndim - 1)
    c = jnp.full(w.shape, strength, jnp.float32)
    if acc is not None:
        acc = acc.reshape(acc.shape + (1,) * (w.ndim - acc.ndim))
        c = c * jnp.where(acc > 0, jax.lax.rsqrt(acc + 1e-7), 0.0)
    log_factor = sum(-(c**k) / k * missed[k - 1].reshape(shape) for k in range(1, 5))
    return w * jnp.exp(log_factor)


def _rate_sums(learning_rate: optax.Schedule, total_steps: int) -> jax.Array:
    """``sums[k - 1, n]``: the sum of ``rate^k`` over steps 0 .. n - 1, k = 1..4, for n up
    to total_steps + 2."""
    counts = jnp.arange(total_steps + 2)
    rates = np.asarray(jax.device_get(learning_rate(counts)), np.float64)
    powers = np.stack([rates**k for k in range(1, 5)])
    zeros = np.zeros((4, 1))
    return jnp.asarray(np.concatenate([zeros, np.cumsum(powers, axis=1)], axis=1), jnp.float32)


class _Accumulator(NamedTuple):
    """Where a table optimizer keeps its squared-gradient sums, and whether per row."""

    get: Any  # inner state -> tree like the parameters (or their rows)
    set: Any  # (inner state, tree) -> inner state
    per_row: bool


_ACCUMULATORS = {
    "adagrad": _Accumulator(
        lambda s: s[0].sum_of_squares,
        lambda s, v: (s[0]._replace(sum_of_squares=v), *s[1:]),
        per_row=False,
    ),
    "rowwise_adagrad": _Accumulator(
        lambda s: s[0].sum_of_squares,
        lambda s, v: (s[0]._replace(sum_of_squares=v), *s[1:]),
        per_row=True,
    ),
}


def _catch_up(params, state: LazyL2State, strength, sums, total_steps, accumulator):
    """``(params, state)`` with each row's L2 pulls of the steps it missed applied: the
    rows scaled in closed form (``_caught_up``), the accumulator grown by the penalty's
    squared gradients of those steps (trapezoid over the row's start and end), and every
    row marked synced up to ``state.count``."""
    t = jnp.minimum(state.count, total_steps + 1)
    acc = accumulator.get(state.inner) if accumulator is not None else None
    none = jax.tree.map(lambda s: None, state.synced)
    caught = jax.tree.map(
        lambda w, synced, a: _caught_up(w, synced, a, t, sums, strength),
        params,
        state.synced,
        none if acc is None else acc,
        is_leaf=lambda x: x is None,
    )
    inner = state.inner
    if acc is not None:

        def grown(a, w, c, synced):
            missed = (t - jnp.clip(synced, 0, t)).astype(jnp.float32)
            squares = strength**2 * 0.5 * (jnp.square(w) + jnp.square(c))
            if accumulator.per_row:
                squares = jnp.mean(squares, axis=tuple(range(1, w.ndim)))
            return a + missed.reshape(missed.shape + (1,) * (a.ndim - 1)) * squares

        inner = accumulator.set(inner, jax.tree.map(grown, acc, params, caught, state.synced))
    synced = jax.tree.map(lambda s: jnp.full_like(s, state.count), state.synced)
    return caught, state._replace(inner=inner, synced=synced)


def lazy_coupled_l2(
    inner: optax.GradientTransformation,
    strength: float,
    learning_rate: optax.Schedule,
    total_steps: int,
    accumulator: _Accumulator | None = None,
) -> optax.GradientTransformation:
    """A coupled L2 penalty for sparse row updates that catches up on the steps a row missed.

    The dense step pulls every row toward zero every step (gradient ``strength * w``, scaled
    by the table optimizer: for Adagrad a factor ``1 - lr_s * strength / sqrt(acc)`` at step
    s, and ``acc`` grows by the penalty's squared gradient). A sparse step sees a row only
    when a batch looks it up; this transform then first applies the pulls of the steps since
    the row's last update in closed form (``_catch_up``), then this step's update with the
    penalty as usual. Rows the batch does not touch wait until it does, or until the state
    is settled (``settle_lazy_l2``, before evaluation and checkpoints). In a dense step no
    step is ever missed and this is exactly the penalty followed by ``inner``."""
    sums = _rate_sums(learning_rate, total_steps)

    def init(params):
        synced = jax.tree.map(lambda p: jnp.zeros(p.shape[:1], jnp.int32), params)
        return LazyL2State(inner.init(params), jnp.zeros([], jnp.int32), synced)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("lazy_coupled_l2 needs the parameters: pass params to update()")
        caught, state = _catch_up(params, state, strength, sums, total_steps, accumulator)
        penalised = jax.tree.map(lambda g, w: g + strength * w, updates, caught)
        inner_updates, inner_state = inner.update(penalised, state.inner, caught)
        out = jax.tree.map(lambda u, c, w: u + (c - w), inner_updates, caught, params)
        synced = jax.tree.map(lambda s: jnp.full_like(s, state.count + 1), state.synced)
        return out, LazyL2State(inner_state, state.count + 1, synced)

    return optax.GradientTransformation(init, update)


def uses_lazy_l2(c: Any) -> bool:
    """Whether the tables' L2 penalty is ``lazy_coupled_l2`` (sparse updates, not Adam)."""
    return (
        c.embedding_l2 > 0
        and c.get("sparse_embedding_updates", False)
        and c.embedding_optimizer != "adam"
    )


def settle_lazy_l2(optim_config: Any, total_steps: int, shared_lr_scale: float = 1.0) -> Any:
    """``(params, opt_state) -> (params, opt_state)`` with every table row's pending L2 pulls
    applied (see ``lazy_coupled_l2``), for evaluation and checkpoints: the parameters the
    dense path would hold. Training on from a settled state takes the same steps. None when
    the run has no lazy penalty."""
    c = optim_config
    if not uses_lazy_l2(c):
        return None
    rate = schedule(group_peaks(c, shared_lr_scale)["embeddings"], c.warmup_steps, total_steps, c)
    sums = _rate_sums(rate, total_steps)
    accumulator = _ACCUMULATORS.get(c.embedding_optimizer)
    is_lazy = lambda x: isinstance(x, LazyL2State)  # noqa: E731

    def settle(params, opt_state):
        changed = {}

        def one(node):
            if not is_lazy(node):
                return node
            own = jax.tree_util.tree_map_with_path(
                lambda path, _: _leaf_at(params, path), node.synced
            )
            caught, node = _catch_up(own, node, c.embedding_l2, sums, total_steps, accumulator)
            for path, leaf in jax.tree_util.tree_leaves_with_path(caught):
                changed[tuple(_key(k) for k in path)] = leaf
            return node

        opt_state = jax.tree.map(one, opt_state, is_leaf=is_lazy)
        params = jax.tree_util.tree_map_with_path(
            lambda path, w: changed.get(tuple(_key(k) for k in path), w), params
        )
        return params, opt_state

    return settle


def _leaf_at(tree: Any, path: tuple) -> Any:
    for entry in path:
        tree = tree[_key(entry)]
    return tree


def make_embedding_optimizer(
    name: str, learning_rate: optax.Schedule, c: Any, total_steps: int = 0
) -> optax.GradientTransformation:
    """Adagrad by default: a row absent from a batch has zero gradient and stays put, while
    Adam's momentum keeps moving rare ids' rows for many steps after they were last seen,
    which overfits long-tail ids (with ``optim.sparse_embedding_updates`` Adam is lazy: only
    the rows a batch touches move). ``rowwise_adagrad`` keeps one accumulator per row (a
    table's state shrinks from rows x dim to rows); ``sgd`` keeps none.

    ``optim.embedding_l2``: a coupled L2 penalty (rows of rarely seen ids shrink toward zero,
    the prior for an id we know little of). With sparse updates (Adagrad, row-wise Adagrad,
    SGD) a row gets the pulls of the steps it missed when a batch next touches it
    (``lazy_coupled_l2``); with Adam only touched rows are pulled."""
    accumulator = _ACCUMULATORS.get(name)
    if name == "adagrad":
        tx = optax.adagrad(learning_rate, initial_accumulator_value=0.1)
    elif name == "rowwise_adagrad":
        tx = optax.chain(scale_by_rowwise_rss(0.1), optax.scale_by_learning_rate(learning_rate))
    elif name == "sgd":
        tx = optax.sgd(learning_rate)
    elif name == "adam":
        tx = optax.adam(learning_rate, b1=c.b1, b2=c.b2)
    else:
        raise ValueError(f"unknown embedding optimizer {name!r}; valid: {EMBEDDING_OPTIMIZERS}")
    if c.embedding_l2 > 0:
        if uses_lazy_l2(c):
            tx = lazy_coupled_l2(tx, c.embedding_l2, learning_rate, total_steps, accumulator)
        else:  # the penalty's gradient, before the optimizer sees it (not decoupled decay)
            tx = optax.chain(optax.add_decayed_weights(c.embedding_l2), tx)
    return in_float32(tx)


def add_l1_penalty(strength: float) -> optax.GradientTransformation:
    """Adds the (sub)gradient of ``strength * sum |w|``, ``strength * sign(w)``, to the
    updates: an L1 penalty on a parameter group, applied before the group's optimizer."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_l1_penalty needs the parameters: pass params to update()")
        return jax.tree.map(lambda g, w: g + strength * jnp.sign(w), updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def with_penalties(
    tx: optax.GradientTransformation, l1: float, l2: float
) -> optax.GradientTransformation:
    """``tx`` preceded by L1 and (coupled) L2 penalty gradients where their strength is > 0."""
    parts = ([add_l1_penalty(l1)] if l1 > 0 else []) + (
        [optax.add_decayed_weights(l2)] if l2 > 0 else []
    )
    return optax.chain(*parts, tx) if parts else tx


def group_peaks(
    optim_config: Any, shared_lr_scale: float = 1.0, text_encoder_learning_rate: float = 1e-4
) -> dict[str, float]:
    """Each optimized parameter group's peak learning rate (the schedules' maxima)."""
    c = optim_config
    return {
        "embeddings": c.embedding_learning_rate * shared_lr_scale,
        "trunk": c.learning_rate * shared_lr_scale,
        "heads": c.learning_rate,
        "text": c.learning_rate,
        "text_encoder": text_encoder_learning_rate,
    }


def learning_rates(
    optim_config: Any, total_steps: int, peaks: dict[str, float]
) -> Callable[[int], dict[str, float]]:
    """``step -> {group: learning rate}`` for schedules of ``total_steps``: one compiled call
    per use (evaluated op by op, the schedules cost ~25 ms at every log step)."""
    c = optim_config
    rates = jax.jit(
        lambda step: {
            group: schedule(peak, c.warmup_steps, total_steps, c)(step)
            for group, peak in peaks.items()
        }
    )
    return lambda step: {group: float(v) for group, v in jax.device_get(rates(step)).items()}


def make_optimizer(
    optim_config: Any,
    total_steps: int,
    trainable_text_layers: frozenset[str] = frozenset(),
    text_encoder_learning_rate: float = 1e-4,
    regularization: Any = None,
    frozen_groups: frozenset[str] = frozenset(),
    frozen_towers: frozenset[str] = frozenset(),
    shared_lr_scale: float = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping, then a per-group optimizer through ``optax.partition``: frozen
    groups (and the towers of ``frozen_towers`` tasks) get ``optax.set_to_zero``, a
    fine-tuned text encoder's top layers Adam at their own (small) rate, each group its L1 /
    L2 penalties from ``regularization``; the shared groups (embeddings, trunk) learn at
    ``shared_lr_scale`` times their rate (staged training's fine-tuning stage)."""
    c = optim_config
    l1 = dict(regularization.l1) if regularization is not None else {}
    l2 = dict(regularization.l2) if regularization is not None else {}
    peaks = group_peaks(c, shared_lr_scale, text_encoder_learning_rate)

    def rate(group: str) -> optax.Schedule:
        return schedule(peaks[group], c.warmup_steps, total_steps, c)

    dense = optax.adamw(rate("heads"), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)
    trunk = optax.adamw(rate("trunk"), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)
    embeddings = make_embedding_optimizer(c.embedding_optimizer, rate("embeddings"), c, total_steps)
    partitioned = optax.partition(
        {
            "embeddings": with_penalties(embeddings, l1.get("embeddings", 0.0), 0.0),
            **{
                group: with_penalties(
                    trunk if group == "trunk" else dense, l1.get(group, 0.0), l2.get(group, 0.0)
                )
                for group in ("trunk", "heads", "text")
            },
            "text_encoder": optax.adamw(
                rate("text_encoder"), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay
            ),
            "frozen": optax.set_to_zero(),
        },
        lambda params: param_labels(params, trainable_text_layers, frozen_groups, frozen_towers),
    )
    if c.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), partitioned)
    return partitioned
