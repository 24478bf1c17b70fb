"""The pure train and eval steps: task losses, per-task trunk gradients, the Gramian path.

Everything here is a function of arrays (no I/O, no host syncs): ``make_train_step`` returns
``(state, batch) -> (state, metrics)`` for the trainer to jit with its shardings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from mtl_jax import balancing, sparse_rows
from mtl_jax import tasks as tasks_lib
from mtl_jax.data.negatives import OFFSETS
from mtl_jax.data.schema import bag_mask_name
from mtl_jax.models import MultiTaskModel, stacked_grads
from mtl_jax.models.model import esmm_tasks
from mtl_jax.tasks import TaskSpec

log = logging.getLogger("mtl_jax")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed."""

    step: jax.Array
    params: Any
    opt_state: Any
    balancer: balancing.CombinerState  # the balancing method's state (weights, history ...)
    rng: jax.Array  # base key; each step's key is fold_in(rng, step)
    teacher: Any = None  # distillation: the teacher's parameters (never updated)


def task_loss_sums(
    tasks: Sequence[TaskSpec],
    logits: dict[str, jax.Array],
    batch: dict[str, Any],
    sample_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-task masked loss sums and label counts, each (T,); ``sample_key`` in training
    (negative down-sampling), None in evaluation (see ``tasks.masked_loss_sum``). A batch's
    ``logit_offsets`` (mtl_jax/data/negatives.py) are added to those tasks' logits."""
    offsets = batch.get(OFFSETS, {})  # training with sampled negatives' logQ correction
    pairs = [
        tasks_lib.masked_loss_sum(
            t,
            logits[t.name] + offsets[t.name] if t.name in offsets else logits[t.name],
            batch["labels"][t.name],
            batch["masks"][t.name],
            None if sample_key is None else jax.random.fold_in(sample_key, i),
        )
        for i, t in enumerate(tasks)
    ]
    return jnp.stack([s for s, _ in pairs]), jnp.stack([c for _, c in pairs])


TASK_ADAPTERS = "trunk_task"  # the trunk's per-task parameters, trained like towers


def _is_frozen(path: str) -> bool:
    """An LM trunk's base weight: under ``lm/`` and not a LoRA adapter."""
    return path.startswith("lm/") and not path.rsplit("/", 1)[-1].startswith("lora_")


def split_frozen(params: dict) -> tuple[dict, dict[str, Any]]:
    """``(trainable, frozen)``: an LM trunk's base weights come out as ``frozen`` ('/'-joined
    trunk paths), never differentiated nor given optimizer state; its per-task adapters
    (``lora_task_*``) move to ``trunk_task``, outside the trunk that gradient methods
    combine task gradients over. Other models' parameters are returned as they are."""
    trunk = params.get("trunk")
    if not isinstance(trunk, dict) or "lm" not in trunk:
        return params, {}
    flat = traverse_util.flatten_dict(trunk, sep="/")
    frozen = {p: v for p, v in flat.items() if _is_frozen(p)}
    per_task = {p: v for p, v in flat.items() if p.rsplit("/", 1)[-1].startswith("lora_task_")}
    shared = {p: v for p, v in flat.items() if p not in frozen and p not in per_task}
    out = {**params, "trunk": traverse_util.unflatten_dict(shared, sep="/")}
    if per_task:
        out[TASK_ADAPTERS] = traverse_util.unflatten_dict(per_task, sep="/")
    return out, frozen


def join_frozen(trainable: dict, frozen: dict[str, Any]) -> dict:
    """The inverse of ``split_frozen`` (also for a part of the trainable tree)."""
    if not frozen and TASK_ADAPTERS not in trainable:
        return trainable
    out = {k: v for k, v in trainable.items() if k != TASK_ADAPTERS}
    flat = {
        **traverse_util.flatten_dict(trainable.get("trunk", {}), sep="/"),
        **traverse_util.flatten_dict(trainable.get(TASK_ADAPTERS, {}), sep="/"),
        **frozen,
    }
    out["trunk"] = traverse_util.unflatten_dict(flat, sep="/")
    return out


class _WithFrozen:
    """A model whose ``apply`` takes trainable parameters (``split_frozen``) and adds the
    frozen ones back; everything else is the model's."""

    def __init__(self, model: MultiTaskModel, frozen: dict[str, Any]):
        self._model, self._frozen = model, frozen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def apply(self, variables: dict, *args, **kwargs):
        params = join_frozen(variables["params"], self._frozen)
        return self._model.apply({**variables, "params": params}, *args, **kwargs)


def task_gradient_mode(model: MultiTaskModel, requested: str, gramian_params: str = "") -> str:
    """The per-task gradient mode the step runs for this model
    (``stacked_grads.resolve_task_gradients``)."""
    language_model = getattr(model, "language_model", None) is not None
    config = None if language_model else model.config
    return stacked_grads.resolve_task_gradients(config, requested, gramian_params, language_model)


def _split_params(params: dict) -> tuple[Any, Any, dict]:
    """(embedding, trunk, the rest): the three ways a gradient method treats parameters."""
    rest = {k: v for k, v in params.items() if k not in ("embedding", "trunk")}
    return params.get("embedding", {}), params["trunk"], rest


def _mean_task_losses(
    tasks: Sequence[TaskSpec], logits: dict, batch: dict, rngs: dict | None = None
) -> jax.Array:
    """Mean loss per task; with ``rngs`` (training) negatives are down-sampled as configured.
    A batch carrying ``teacher_logits`` (distillation) mixes in the soft-target loss:
    ``(1 - alpha) * label loss + alpha * distillation loss`` per task."""
    key = None if rngs is None else jax.random.fold_in(rngs["dropout"], 0x5A3)
    sums, counts = task_loss_sums(tasks, logits, batch, key)
    losses = sums / jnp.maximum(counts, 1.0)
    if "teacher_logits" not in batch:
        return losses
    alpha, temperature = batch["distill"]
    soft = []
    for t in tasks:
        mask = batch["masks"][t.name].astype(jnp.float32)
        per_example = tasks_lib.distillation_loss(
            t, logits[t.name], batch["teacher_logits"][t.name], temperature
        )
        soft.append(jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0))
    return (1.0 - alpha) * losses + alpha * jnp.stack(soft)


def _embed(
    model: MultiTaskModel, embedding: Any, features: dict, *, train: bool = False, rngs=None
) -> jax.Array:
    return model.apply(
        {"params": {"embedding": embedding}},
        features,
        train=train,
        rngs=rngs,
        method=MultiTaskModel.embed,
    )


def _losses_from_embedded(model, tasks, batch, trunk, rest, x, *, train, rngs=None) -> jax.Array:
    """Task losses (T,) as a function of the trunk, the other groups and the embedded input."""
    logits = model.apply(
        {"params": {"trunk": trunk, **rest}},
        x,
        train=train,
        rngs=rngs,
        method=MultiTaskModel.from_embedded,
    )
    return _mean_task_losses(tasks, logits, batch, rngs if train else None)


def _losses_from_reps(model, tasks, batch, rest, reps, rngs) -> jax.Array:
    """Task losses (T,) of the towers (the parameter groups besides embedding and trunk)
    on the trunk's representations, in training mode."""
    logits = model.apply({"params": rest}, reps, train=True, rngs=rngs, method=MultiTaskModel.heads)
    return _mean_task_losses(tasks, logits, batch, rngs)


TASK_GRADIENT_MODES = ("auto", "batched", "sequential", "stacked")


def _per_task_trunk_grads(vjp_fn: Callable, num_tasks: int, mode: str = "batched") -> Any:
    """The trunk gradient of each task (leaves with a leading task axis) from a vjp whose
    first input is the trunk: ``"batched"``, one ``vmap`` over the T unit cotangents (every
    matmul of the backward gains a task batch dimension); ``"sequential"``, T backward
    passes of plain matmuls, stacked. Same values; which is faster depends on the model
    and the backend (sequential needs less memory; measured in
    experiments/results/profile.md). ``"stacked"`` is the train step's own MMoE pass
    (``_stacked_task_grads``); here, e.g. for logged Gramians, it runs batched.
    """
    return _per_task_vjp(vjp_fn, num_tasks, mode)[0]


def _per_task_vjp(vjp_fn: Callable, num_tasks: int, mode: str = "batched") -> tuple:
    """Every input's gradient for each task (leaves with a leading task axis): the T
    backward passes of ``_per_task_trunk_grads``, keeping what they give besides the trunk
    (under jit, what the caller does not use is never computed)."""
    cotangents = jnp.eye(num_tasks)
    if mode == "sequential":
        grads = [vjp_fn(cotangents[t]) for t in range(num_tasks)]
        return jax.tree.map(lambda *per_task: jnp.stack(per_task), *grads)
    return jax.vmap(vjp_fn)(cotangents)


def scope_mask(trunk: Any, pattern: str) -> dict[str, bool]:
    """Which trunk parameters (by '/'-joined path) the Gramian is taken over.

    An empty pattern means the whole trunk (exact); otherwise ``re.search`` on each path,
    e.g. ``'experts/(kernel|bias)_1$'`` for the last expert layer of the default MMoE.
    """
    paths = list(traverse_util.flatten_dict(trunk, sep="/"))
    if not pattern:
        return {p: True for p in paths}
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"balancing.gramian_params {pattern!r} is not a regex: {e}") from e
    mask = {p: bool(regex.search(p)) for p in paths}
    if not any(mask.values()):
        raise ValueError(
            f"balancing.gramian_params {pattern!r} matches no trunk parameter; "
            f"trunk parameters: {paths}"
        )
    return mask


def _split_by_mask(tree: Any, mask: dict[str, bool]) -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(tree, sep="/")
    return (
        {p: v for p, v in flat.items() if mask[p]},
        {p: v for p, v in flat.items() if not mask[p]},
    )


def _merge_flat(a: dict, b: dict) -> Any:
    return traverse_util.unflatten_dict({**a, **b}, sep="/")


def _scoped_gradient_step(
    model, tasks, rule, balancer_state, batch, parts, rngs, pattern, mode="batched"
):
    """Gradient-rule step with the Gramian over the trunk parameters ``pattern`` selects.

    One forward; T backward passes that stop at the scoped parameters (XLA prunes the rest);
    one backward with the rule's weights for the trunk, and one with the plain sum for the
    heads and the embedded input (the same one when the rule weights the whole model).
    """
    trunk, rest, x = parts
    scoped, unscoped = _split_by_mask(trunk, scope_mask(trunk, pattern))

    def losses(sc, un, others, x):
        return _losses_from_embedded(
            model, tasks, batch, _merge_flat(sc, un), others, x, train=True, rngs=rngs
        )

    task_losses, vjp_fn = jax.vjp(losses, scoped, unscoped, rest, x)
    gram = balancing.gramian(_per_task_trunk_grads(vjp_fn, len(tasks), mode))
    weights, balancer = balancing.compute_weights(rule, balancer_state, task_losses, gram)
    g_scoped, g_unscoped, rest_grads, x_grad = vjp_fn(weights)
    if not rule.weights_whole_model:
        _, _, rest_grads, x_grad = vjp_fn(jnp.ones_like(weights))
    trunk_update = _merge_flat(g_scoped, g_unscoped)
    return task_losses, trunk_update, rest_grads, x_grad, weights, balancer, gram


GRAMIAN_SITES = ("trunk", "representation")


def gramian_option_problem(
    rule: balancing.WeightingRule, gramian_params: str, gramian_at: str
) -> tuple[str, str] | None:
    """``(key, what is wrong)`` when ``balancing.gramian_params`` / ``gramian_at`` do not fit
    the rule, else None: only rules that weight task gradients from their Gramian can take
    it elsewhere than over the whole trunk (not loss weighting, not ``combine`` rules)."""
    if gramian_at not in GRAMIAN_SITES:
        return "gramian_at", f"{gramian_at!r}; valid: {GRAMIAN_SITES}"
    by_gramian = rule.needs_gramian and rule.combine is None
    if gramian_at != "trunk":
        if not by_gramian:
            return "gramian_at", (
                f"{gramian_at!r} is for Gramian-based gradient methods, not {rule.name!r}"
            )
        if gramian_params:
            return "gramian_params", (
                f"selects trunk parameters, so it needs balancing.gramian_at='trunk', not "
                f"{gramian_at!r}"
            )
    if gramian_params and not by_gramian:
        return "gramian_params", f"only Gramian-based gradient methods take it, not {rule.name!r}"
    return None


def _stacked_task_grads(model, tasks, batch, inputs, rngs):
    """The per-task trunk gradients with ``task_gradients="stacked"`` (MMoE, no dropout,
    towers that read one representation each; configlib checks): one backward of the towers
    leaves each task's cotangent on its own representation, and ``stacked_grads`` turns all
    T of them into the T trunk gradients in one pass with a task axis. Returns the task
    losses, those gradients, and ``weights -> (heads' gradients, input's gradient)``: the
    weighted towers' backward, and the per-task cotangents where the trunk reads its input,
    weighted (the trunk's backward is not run a second time)."""
    trunk, rest, x = inputs
    num_tasks = len(tasks)
    reps, cache = stacked_grads.mmoe_forward(trunk, x, num_tasks)
    task_losses, heads_vjp = jax.vjp(
        lambda rest, reps: _losses_from_reps(model, tasks, batch, rest, reps, rngs), rest, reps
    )
    _, own = heads_vjp(jnp.ones((num_tasks,), jnp.float32))  # tower t feeds loss t only
    trunk_task_grads, below = stacked_grads.mmoe_task_grads(trunk, x, cache, jnp.stack(own, axis=1))

    def rest_and_input(weights):
        # Tower t's cotangent on rep t scales with weights[t]: so does its share of x's.
        return heads_vjp(weights)[0], stacked_grads.mmoe_input_grad(trunk, below, weights)

    return task_losses, trunk_task_grads, rest_and_input


def _whole_trunk_task_grads(model, tasks, batch, inputs, rngs, mode: str):
    """The task losses, each task's gradient of the whole trunk (leaves with a leading task
    axis) and ``weights -> (heads' gradients, input's gradient)`` for the weighted losses,
    in the given mode: ``stacked`` (``_stacked_task_grads``), ``sequential`` (T backward
    passes, which also leave each task's gradient of the heads and of the embedded input:
    their weighted sums need no further backward) or ``batched`` (one vmap over the trunk's
    cotangents; vmapping the heads' and input's too costs more than one plain backward)."""
    if mode == "stacked":
        return _stacked_task_grads(model, tasks, batch, inputs, rngs)
    task_losses, vjp_fn = jax.vjp(
        lambda tr, others, x: _losses_from_embedded(
            model, tasks, batch, tr, others, x, train=True, rngs=rngs
        ),
        *inputs,
    )
    if mode == "sequential":
        trunk_task_grads, *others = _per_task_vjp(vjp_fn, len(tasks), "sequential")
        return task_losses, trunk_task_grads, lambda w: balancing.weighted_sum(tuple(others), w)
    trunk_task_grads = _per_task_trunk_grads(vjp_fn, len(tasks), mode)
    return task_losses, trunk_task_grads, lambda w: vjp_fn(w)[1:]


def _representation_gradient_step(model, tasks, rule, balancer_state, batch, params, rngs):
    """Gradient-rule step with the Gramian of the task gradients at the representation.

    Task t's gradient is ``d loss_t / d rep`` (B, H), summed over the T representations the
    trunk returns: for Shared-Bottom that is the gradient at the one shared tensor; for MMoE
    and PLE, whose towers each read their own mixture, it is the gradient at the task's own
    mixture (LibMTL's ``rep_grad``), compared across tasks as vectors of one space. The
    weights then scale the task losses for everything below the representation (trunk and
    embeddings, as LibMTL and MultiBalance do); the towers get the plain sum (or the weights,
    for rules that weight the whole model). Cost: one forward and one backward, EW's (with
    ESMM, T more backward passes through the towers only).
    """
    # Below the representation: the embeddings and the trunk, an LM trunk's per-task
    # adapters included (each still reached by its own task's loss only).
    below = {k: params[k] for k in ("embedding", "trunk", TASK_ADAPTERS) if k in params}
    rest = {k: v for k, v in params.items() if k not in below}

    def represent(below):
        return model.apply(
            {"params": below},
            batch["features"],
            train=True,
            rngs=rngs,
            method=lambda m, features, train: m.represent(
                m.embed(features, train=train), train=train
            ),
        )

    reps, below_vjp = jax.vjp(represent, below)
    task_losses, heads_vjp = jax.vjp(
        lambda rest, reps: _losses_from_reps(model, tasks, batch, rest, reps, rngs), rest, reps
    )
    ones = jnp.ones((len(tasks),), jnp.float32)
    if not esmm_tasks(model.config)[0]:
        # Tower t reads only rep t and feeds only loss t, so one backward pass of the summed
        # loss leaves d loss_t / d rep_t in rep t's cotangent: EW's backward, nothing more.
        rest_grads, own = heads_vjp(ones)
        gram = balancing.gramian(jnp.stack(own))
        weights, balancer = balancing.compute_weights(rule, balancer_state, task_losses, gram)
        reps_cotangent = [w * g for w, g in zip(weights, own, strict=True)]
    else:  # ESMM: the CTCVR loss also reads the CTR tower; T backward passes of the towers
        per_task = jax.vmap(lambda ct: jnp.stack(heads_vjp(ct)[1]))(jnp.eye(len(tasks)))
        gram = balancing.gramian(per_task.sum(axis=1))  # (loss t, rep k, B, H) -> (t, B, H)
        weights, balancer = balancing.compute_weights(rule, balancer_state, task_losses, gram)
        reps_cotangent = list(jnp.einsum("t,tk...->k...", weights, per_task))
        rest_grads, _ = heads_vjp(ones)
    if rule.weights_whole_model:
        rest_grads, _ = heads_vjp(weights)
    (below_grads,) = below_vjp(reps_cotangent)
    return task_losses, {**below_grads, **rest_grads}, weights, balancer, gram


def embedding_norm_penalty(
    model: MultiTaskModel, embedding: Any, features: dict, strength: float
) -> jax.Array:
    """``strength`` x the batch mean of each example's summed squared id embeddings: its
    gradient reaches only the rows this batch looks up, in proportion to how often."""
    total = 0.0
    for spec in model.features:
        if spec.is_dense or spec.name not in embedding:
            continue
        squares = jnp.square(embedding[spec.name]["embedding"][features[spec.name]]).sum(-1)
        if spec.is_bag:
            squares = squares * features[bag_mask_name(spec.name)]
        total = total + jnp.sum(squares)
    batch = next(iter(features.values())).shape[0]
    return strength * total / batch


def make_train_step(
    model: MultiTaskModel,
    tasks: Sequence[TaskSpec],
    tx: optax.GradientTransformation,
    rule: balancing.WeightingRule,
    gramian_params: str = "",
    embedding_norm: float = 0.0,
    distill: tuple[MultiTaskModel, float, float] | None = None,
    task_gradients: str = "auto",
    gramian_at: str = "trunk",
    sparse_embeddings: bool = False,
    state_sharding: TrainState | None = None,
    settle: Callable | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A pure ``(state, batch) -> (state, metrics)``; jit it with the shardings you need.

    Loss-weighting rules: one forward, the rule's weights from the task losses, one backward
    of the weighted sum. Gradient rules: per-task gradients of the shared trunk from T
    backward passes of one forward, their Gramian -> weights -> one combined trunk
    gradient; heads and embedded input get the plain (or, for GradNorm, weighted) sum of
    their task gradients, and the embedding tables one backward of the lookup from that
    sum, so no per-task gradient of an embedding table is formed. With
    ``task_gradients="sequential"`` (T vjp calls) those head and input sums come from the
    same T passes (T backward passes in all); ``"batched"`` (a vmap over the T cotangents)
    takes them from one more vjp (T + 1), which on 2 CPU cores is cheaper than batching
    them too (experiments/results/profile.md).

    ``gramian_params`` (a regex over trunk parameter paths, see ``scope_mask``) takes the
    Gramian over a part of the trunk only, typically its last shared layer (as GradNorm's
    paper does): the per-task backward then stops at that layer, and the whole trunk gets the
    weighted gradient ``sum_t w_t g_t`` from one more backward. Cheaper, but the weights are
    those that the chosen layer's gradients call for, not the whole trunk's.

    ``gramian_at="representation"`` takes the Gramian of the task gradients at the trunk's
    output instead (see ``_representation_gradient_step``): about EW's cost for every
    Gramian method.

    ``sparse_embeddings`` runs the step on the rows its batch looks up (``sparse_rows_step``):
    the same update for Adagrad and SGD, at a cost that does not grow with the tables.
    With ``state_sharding`` (the jitted state's shardings), tables split by rows over a mesh
    axis are read and written with ``jax.shard_map``, each device on its own rows; with
    ``settle`` (``optim.settle_lazy_l2``), the looked-up rows first get the L2 pulls of the
    steps they missed, so that the forward pass sees what the dense path would.
    """
    task_gradients = task_gradient_mode(model, task_gradients, gramian_params)
    problem = gramian_option_problem(rule, gramian_params, gramian_at)
    if problem:
        raise ValueError(f"balancing.{problem[0]}: {problem[1]}")
    if task_gradients == "stacked" and (
        problem := stacked_grads.stacked_problem(model.config, gramian_params)
    ):
        raise ValueError(f"balancing.task_gradients: 'stacked' {problem}")

    def with_teacher(state: TrainState, batch: dict) -> dict:
        if distill is None:
            return batch
        teacher_model, alpha, temperature = distill
        teacher_logits = teacher_model.apply(
            {"params": state.teacher}, batch["features"], train=False
        )
        return {
            **batch,
            "teacher_logits": jax.lax.stop_gradient(teacher_logits),
            "distill": (alpha, temperature),
        }

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        batch = with_teacher(state, batch)
        if sparse_embeddings:
            return sparse_rows_step(model, step_on, state, batch, state_sharding, settle)
        return step_on(model, state, batch)

    def step_on(model: MultiTaskModel, state: TrainState, batch: dict):
        """The step of ``model`` (the full one, or the row view's) on a batch that carries
        the teacher's logits already."""
        rngs = {"dropout": jax.random.fold_in(state.rng, state.step)}
        params, frozen = split_frozen(state.params)
        if params is not state.params:  # an LM trunk: its base weights stay out of it all
            model = _WithFrozen(model, frozen)

        def losses_of_params(params):
            logits = model.apply({"params": params}, batch["features"], train=True, rngs=rngs)
            return _mean_task_losses(tasks, logits, batch, rngs)

        metrics = {}
        if not rule.needs_gramian:
            task_losses, vjp_fn = jax.vjp(losses_of_params, params)
            weights, balancer = balancing.compute_weights(rule, state.balancer, task_losses, None)
            (grads,) = vjp_fn(weights)
        elif gramian_at == "representation":
            task_losses, grads, weights, balancer, metrics["gram"] = _representation_gradient_step(
                model, tasks, rule, state.balancer, batch, params, rngs
            )
        else:
            embedding, trunk, rest = _split_params(params)
            x, embed_vjp = jax.vjp(
                lambda e: _embed(model, e, batch["features"], train=True, rngs=rngs), embedding
            )
            if gramian_params:
                task_losses, trunk_update, rest_grads, x_grad, weights, balancer, gram = (
                    _scoped_gradient_step(
                        model,
                        tasks,
                        rule,
                        state.balancer,
                        batch,
                        (trunk, rest, x),
                        rngs,
                        gramian_params,
                        task_gradients,
                    )
                )
            else:
                task_losses, trunk_task_grads, rest_and_input = _whole_trunk_task_grads(
                    model, tasks, batch, (trunk, rest, x), rngs, task_gradients
                )
                trunk_update, weights, rest_weights, balancer = balancing.combine_task_grads(
                    rule, state.balancer, trunk_task_grads, task_losses
                )
                rest_grads, x_grad = rest_and_input(rest_weights)
                gram = balancing.gramian(trunk_task_grads)  # XLA shares it with the rule
            (embedding_grads,) = embed_vjp(x_grad)
            grads = {"trunk": trunk_update, **rest_grads}
            if "embedding" in params:  # absent when every input feature is dense
                grads["embedding"] = embedding_grads
            metrics["gram"] = gram
        if embedding_norm > 0 and "embedding" in params:
            penalty, penalty_grads = jax.value_and_grad(
                lambda e: embedding_norm_penalty(model, e, batch["features"], embedding_norm)
            )(params["embedding"])
            grads = {**grads, "embedding": jax.tree.map(jnp.add, grads["embedding"], penalty_grads)}
            metrics["embedding_norm_penalty"] = penalty
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        loss = jnp.sum(weights * task_losses)
        grad_norm = optax.tree.norm(grads)
        # A step whose loss, gradients or update are not finite is not applied: parameters,
        # optimizer and balancing state stay as they were (the loop counts such steps).
        applied = (
            jnp.isfinite(loss)
            & jnp.all(jnp.isfinite(task_losses))
            & jnp.isfinite(grad_norm)
            & jnp.isfinite(optax.tree.norm(updates))
        )
        metrics.update(
            loss=loss,
            task_losses=task_losses,
            weights=weights,
            grad_norm=grad_norm,
            applied=applied,
        )
        kept = select_tree(
            applied,
            (new_params, opt_state, balancer),
            (params, state.opt_state, state.balancer),
        )
        new_state = state.replace(
            step=state.step + 1,
            params=join_frozen(kept[0], frozen),
            opt_state=kept[1],
            balancer=kept[2],
        )
        return new_state, metrics

    return train_step


def sparse_rows_step(
    model: MultiTaskModel,
    step_on: Callable,
    state: TrainState,
    batch: dict,
    sharding: TrainState | None = None,
    settle: Callable | None = None,
) -> tuple[TrainState, dict]:
    """``step_on(model, state, batch)`` on the row view of the embedding tables (see
    mtl_jax/sparse_rows.py): each table and each optimizer-state copy of it is cut down to
    the rows this batch looks up, the step runs on that view with the ids renumbered, and
    the view's rows are written back. Nothing table-sized is formed. ``sharding``: the
    state's shardings, so that row-split tables are read and written where their rows
    live."""
    names = [spec.name for spec in model.features if not spec.is_dense]
    shapes = sparse_rows.table_shapes(state.params, names)
    if not shapes:
        return step_on(model, state, batch)
    features = dict(batch["features"])
    slots = {}
    for name, shape in shapes.items():
        slots[name], features[name] = sparse_rows.unique_ids(features[name], shape[0])
    param_owners = sparse_rows.row_owners(state.params, shapes)
    state_owners = sparse_rows.row_owners(state.opt_state, shapes)
    params_sharding = None if sharding is None else sharding.params
    opt_sharding = None if sharding is None else sharding.opt_state
    view = state.replace(
        params=sparse_rows.gather_rows(state.params, param_owners, slots, params_sharding),
        opt_state=sparse_rows.gather_rows(state.opt_state, state_owners, slots, opt_sharding),
    )
    if settle is not None:  # the rows' pending L2 pulls, before the forward pass reads them
        params, opt_state = settle(view.params, view.opt_state)
        view = view.replace(params=params, opt_state=opt_state)
    view_model = model.clone(lookup_rows=tuple((n, s.shape[0]) for n, s in slots.items()))
    new_view, metrics = step_on(view_model, view, {**batch, "features": features})
    new_state = new_view.replace(
        params=sparse_rows.scatter_rows(
            state.params, new_view.params, param_owners, slots, params_sharding
        ),
        opt_state=sparse_rows.scatter_rows(
            state.opt_state, new_view.opt_state, state_owners, slots, opt_sharding
        ),
    )
    return new_state, metrics


def settling(settle: Callable) -> Callable[[TrainState], TrainState]:
    """``settle`` (``optim.settle_lazy_l2``: params and optimizer state -> the same with
    every table row's pending L2 pulls applied) as a function of the whole state."""

    def settled(state: TrainState) -> TrainState:
        params, opt_state = settle(state.params, state.opt_state)
        return state.replace(params=params, opt_state=opt_state)

    return settled


def make_trunk_gramian(
    model: MultiTaskModel, tasks: Sequence[TaskSpec], task_gradients: str = "auto"
) -> Callable:
    """``(params, batch) -> (T, T)`` Gramian of per-task trunk gradients, for diagnostics of
    loss-weighting runs (gradient methods get it from their train step for free)."""
    task_gradients = task_gradient_mode(model, task_gradients)

    def fn(params, batch):
        trainable, frozen = split_frozen(params)
        bound = model if trainable is params else _WithFrozen(model, frozen)
        embedding, trunk, rest = _split_params(trainable)
        x = _embed(bound, embedding, batch["features"])
        _, vjp_fn = jax.vjp(
            lambda tr: _losses_from_embedded(bound, tasks, batch, tr, rest, x, train=False), trunk
        )
        return balancing.gramian(_per_task_trunk_grads(vjp_fn, len(tasks), task_gradients))

    return fn


def make_eval_step(model: MultiTaskModel, tasks: Sequence[TaskSpec]) -> Callable:
    """``(params, batch) -> (predictions per task, loss sums (T,), label counts (T,))``."""

    def eval_step(params: Any, batch: dict):
        logits = model.apply({"params": params}, batch["features"], train=False)
        predictions = {t.name: tasks_lib.predict(t, logits[t.name]) for t in tasks}
        sums, counts = task_loss_sums(tasks, logits, batch)
        return predictions, sums, counts

    return eval_step


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise ``where(pred, on_true, on_false)`` of two trees of one structure (typed PRNG
    keys included); elementwise, so XLA fuses it into the computation of ``on_true``."""

    def select(a, b):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = jnp.where(pred, jax.random.key_data(a), jax.random.key_data(b))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jnp.where(pred, a, b)

    return jax.tree.map(select, on_true, on_false)
