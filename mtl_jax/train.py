"""Training and evaluation: a pure jitted train step, and the loop that drives it.

``train_and_evaluate(config, workdir)`` builds the data, model and optimizer, resumes from
the workdir's latest checkpoint if there is one, trains with periodic validation and early
stopping, and reports test metrics of the best-on-validation parameters.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from mtl_jax import balancing, benchmark, configlib, parallel, ranking, reporting
from mtl_jax import metrics as metrics_lib
from mtl_jax import stages as stages_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax.balancing.config import rule_from_config
from mtl_jax.checkpoint import Checkpointer, IncompatibleCheckpointError
from mtl_jax.data import MultiTaskDataset, Split, load_dataset
from mtl_jax.data.pipeline import check_batch_divides, eval_batches, train_iterator
from mtl_jax.data.schema import cross_validation_fold
from mtl_jax.models import MultiTaskModel, gate_stats
from mtl_jax.models.gate_stats import make_gate_stats
from mtl_jax.models.model import esmm_tasks
from mtl_jax.optim import make_optimizer
from mtl_jax.preemption import PreemptionWatch
from mtl_jax.tasks import TaskSpec
from mtl_jax.text import features as text_features

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


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the last good checkpoint in the workdir is left untouched."""


def configured_tasks(config: ml_collections.ConfigDict, dataset: MultiTaskDataset):
    """The run's tasks, in config order, with the config's per-task loss options."""
    by_name = {t.name: t for t in dataset.tasks}
    return tuple(
        tasks_lib.with_loss_options(by_name[name], config.task_loss[name]) for name in config.tasks
    )


def output_biases(
    tasks: Sequence[TaskSpec], train: Split, esmm: tuple[str, str] = ("", "")
) -> tuple[tuple[float, ...], ...]:
    """Initial output biases that make the untrained model predict the train prior.

    Without them a rating head starts near 0 while ratings average ~4, and its huge early
    loss swamps the other tasks' gradients for the first few hundred steps. Under ESMM the
    conversion tower starts at P(ctcvr) / P(ctr), so that its product with pCTR does.
    """
    ctr, ctcvr = esmm
    out = []
    for task in tasks:
        mask = train.masks[task.name] > 0
        labels = train.labels[task.name][mask]
        prior = tasks_lib.trivial_predictions(task, labels, 1)[0]
        if task.name == ctcvr and ctr:
            ctr_task = next(t for t in tasks if t.name == ctr)
            ctr_mask = train.masks[ctr] > 0
            ctr_rate = tasks_lib.trivial_predictions(ctr_task, train.labels[ctr][ctr_mask], 1)[0]
            prior = prior / max(float(ctr_rate), 1e-6)
        if task.kind == "binary":
            p = float(np.clip(prior, 1e-4, 1 - 1e-4))
            # Down-sampled negatives: the raw head learns odds / rate; start it there.
            out.append((math.log(p / (1 - p)) - math.log(task.negative_rate),))
        elif task.kind == "regression":
            out.append((float(prior),))
        elif task.kind == "multilabel":
            p = np.clip(prior, 1e-4, 1 - 1e-4)
            out.append(tuple(np.log(p / (1 - p)).tolist()))
        else:
            out.append(tuple(np.log(np.clip(prior, 1e-6, 1.0)).tolist()))
    return tuple(out)


def task_loss_sums(
    tasks: Sequence[TaskSpec],
    logits: dict[str, jax.Array],
    batch: dict[str, Any],
    sample_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-task masked loss sums and label counts, each (T,); ``sample_key`` in training
    (negative down-sampling), None in evaluation (see ``tasks.masked_loss_sum``)."""
    pairs = [
        tasks_lib.masked_loss_sum(
            t,
            logits[t.name],
            batch["labels"][t.name],
            batch["masks"][t.name],
            None if sample_key is None else jax.random.fold_in(sample_key, i),
        )
        for i, t in enumerate(tasks)
    ]
    return jnp.stack([s for s, _ in pairs]), jnp.stack([c for _, c in pairs])


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


def _per_task_trunk_grads(vjp_fn: Callable, num_tasks: int) -> Any:
    """One vmap over the T unit cotangents of a vjp whose first input is the trunk."""
    return jax.vmap(lambda ct: vjp_fn(ct)[0])(jnp.eye(num_tasks))


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


def _scoped_gradient_step(model, tasks, rule, balancer_state, batch, parts, rngs, pattern):
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
    gram = balancing.gramian(_per_task_trunk_grads(vjp_fn, len(tasks)))
    weights, balancer = balancing.compute_weights(rule, balancer_state, task_losses, gram)
    g_scoped, g_unscoped, rest_grads, x_grad = vjp_fn(weights)
    if not rule.weights_whole_model:
        _, _, rest_grads, x_grad = vjp_fn(jnp.ones_like(weights))
    trunk_update = _merge_flat(g_scoped, g_unscoped)
    return task_losses, trunk_update, rest_grads, x_grad, weights, balancer, gram


def embedding_norm_penalty(
    model: MultiTaskModel, embedding: Any, features: dict, strength: float
) -> jax.Array:
    """``strength`` x the batch mean of each example's summed squared id embeddings: its
    gradient reaches only the rows this batch looks up, in proportion to how often."""
    total = 0.0
    for spec in model.features:
        if spec.is_dense or spec.name not in embedding:
            continue
        rows = embedding[spec.name]["embedding"][features[spec.name]]
        total = total + jnp.sum(jnp.square(rows))
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
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A pure ``(state, batch) -> (state, metrics)``; jit it with the shardings you need.

    Loss-weighting rules: one forward, the rule's weights from the task losses, one backward
    of the weighted sum. Gradient rules: per-task gradients of the shared trunk only (a vmap
    over T cotangents of the trunk's vjp), their Gramian -> weights -> one combined trunk
    gradient; embeddings and heads get the plain sum of task gradients from one more vjp of
    the same forward pass, so no per-task gradient of an embedding table or head is formed.

    ``gramian_params`` (a regex over trunk parameter paths, see ``scope_mask``) takes the
    Gramian over a part of the trunk only, typically its last shared layer (as GradNorm's
    paper does): the per-task backward then stops at that layer, and the whole trunk gets the
    weighted gradient ``sum_t w_t g_t`` from one more backward. Cheaper, but the weights are
    those that the chosen layer's gradients call for, not the whole trunk's.
    """
    num_tasks = len(tasks)
    if gramian_params and rule.combine is not None:
        raise ValueError(
            f"balancing method {rule.name!r} combines whole task gradients, so it cannot take "
            "balancing.gramian_params; leave it empty"
        )

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rngs = {"dropout": jax.random.fold_in(state.rng, state.step)}
        if distill is not None:
            teacher_model, alpha, temperature = distill
            teacher_logits = teacher_model.apply(
                {"params": state.teacher}, batch["features"], train=False
            )
            batch = {
                **batch,
                "teacher_logits": jax.lax.stop_gradient(teacher_logits),
                "distill": (alpha, temperature),
            }

        def losses_of_params(params):
            logits = model.apply({"params": params}, batch["features"], train=True, rngs=rngs)
            return _mean_task_losses(tasks, logits, batch, rngs)

        metrics = {}
        if not rule.needs_gramian:
            task_losses, vjp_fn = jax.vjp(losses_of_params, state.params)
            weights, balancer = balancing.compute_weights(rule, state.balancer, task_losses, None)
            (grads,) = vjp_fn(weights)
        else:
            embedding, trunk, rest = _split_params(state.params)
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
                    )
                )
            else:
                task_losses, vjp_fn = jax.vjp(
                    lambda tr, others, x: _losses_from_embedded(
                        model, tasks, batch, tr, others, x, train=True, rngs=rngs
                    ),
                    trunk,
                    rest,
                    x,
                )
                trunk_task_grads = _per_task_trunk_grads(vjp_fn, num_tasks)
                trunk_update, weights, rest_weights, balancer = balancing.combine_task_grads(
                    rule, state.balancer, trunk_task_grads, task_losses
                )
                _, rest_grads, x_grad = vjp_fn(rest_weights)
                gram = balancing.gramian(trunk_task_grads)  # XLA shares it with the rule
            (embedding_grads,) = embed_vjp(x_grad)
            grads = {"trunk": trunk_update, **rest_grads}
            if "embedding" in state.params:  # absent when every input feature is dense
                grads["embedding"] = embedding_grads
            metrics["gram"] = gram
        if embedding_norm > 0 and "embedding" in state.params:
            penalty, penalty_grads = jax.value_and_grad(
                lambda e: embedding_norm_penalty(model, e, batch["features"], embedding_norm)
            )(state.params["embedding"])
            grads = {**grads, "embedding": jax.tree.map(jnp.add, grads["embedding"], penalty_grads)}
            metrics["embedding_norm_penalty"] = penalty
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update(
            loss=jnp.sum(weights * task_losses),
            task_losses=task_losses,
            weights=weights,
            grad_norm=optax.tree.norm(grads),
        )
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, balancer=balancer
        )
        return new_state, metrics

    return train_step


def make_trunk_gramian(model: MultiTaskModel, tasks: Sequence[TaskSpec]) -> Callable:
    """``(params, batch) -> (T, T)`` Gramian of per-task trunk gradients, for diagnostics of
    loss-weighting runs (gradient methods get it from their train step for free)."""

    def fn(params, batch):
        embedding, trunk, rest = _split_params(params)
        x = _embed(model, embedding, batch["features"])
        _, vjp_fn = jax.vjp(
            lambda tr: _losses_from_embedded(model, tasks, batch, tr, rest, x, train=False), trunk
        )
        return balancing.gramian(_per_task_trunk_grads(vjp_fn, len(tasks)))

    return fn


def gradient_diagnostics(gram: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> dict:
    """Per-task trunk gradient norms, pairwise cosines and the effective task weights."""
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    cos = gram / np.maximum(np.outer(norms, norms), 1e-30)
    out = {f"{n}/grad_norm": float(norms[i]) for i, n in enumerate(names)}
    out.update({f"{n}/weight": float(weights[i]) for i, n in enumerate(names)})
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"cos/{names[i]}-{names[j]}"] = float(cos[i, j])
    return out


def make_eval_step(model: MultiTaskModel, tasks: Sequence[TaskSpec]) -> Callable:
    """``(params, batch) -> (predictions per task, loss sums (T,), label counts (T,))``."""

    def eval_step(params: Any, batch: dict):
        logits = model.apply({"params": params}, batch["features"], train=False)
        predictions = {t.name: tasks_lib.predict(t, logits[t.name]) for t in tasks}
        sums, counts = task_loss_sums(tasks, logits, batch)
        return predictions, sums, counts

    return eval_step


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples configs hold."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class Trainer:
    """Holds the compiled steps and shardings of one configured run."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        dataset: MultiTaskDataset,
        mesh: jax.sharding.Mesh | None = None,
        stage: int = 0,
    ):
        """``stage``: which of ``config.stages`` this trainer's train step runs (see
        mtl_jax/stages.py); its tasks, frozen groups and learning rates."""
        configlib.validate(config)
        configlib.validate_against_dataset(config, dataset)
        self.config = config
        self.dataset = dataset
        self.mesh = (
            mesh
            if mesh is not None
            else parallel.make_mesh(config.mesh.num_devices or None, model=config.mesh.model)
        )
        n_data = parallel.data_axis_size(self.mesh)
        check_batch_divides(config.train.batch_size, n_data, "train.batch_size")
        check_batch_divides(config.train.eval_batch_size, n_data, "train.eval_batch_size")

        self.tasks = configured_tasks(config, dataset)
        self.stages = stages_lib.plan(config)
        self.stage_index = stage
        self.stage = self.stages[stage]
        # The tasks this stage trains on (evaluation always covers every task).
        self.train_tasks = tuple(t for t in self.tasks if t.name in self.stage.tasks)
        self.train_task_names = tuple(t.name for t in self.train_tasks)
        feature_by_name = {f.name: f for f in dataset.features}
        features = tuple(feature_by_name[name] for name in config.input_features)
        vocab = {f.name: f.vocab_size for f in dataset.features}
        text = text_features.TextSetup.from_config(config.text, dataset)
        self.text = text
        self.model = MultiTaskModel(
            features,
            self.tasks,
            config.model,
            output_biases(self.tasks, dataset.train, esmm_tasks(config.model)),
            text_features=tuple((name, vocab[name]) for name in config.text.features),
            text_dim=text.dim,
            text_encoder=text.bert_config,
            text_token_length=text.token_length,
            text_trainable_layers=config.text.finetune_layers,
        )
        self.teacher = self._load_teacher(self.mesh)
        self.tx = make_optimizer(
            config.optim,
            self.stage.steps,
            text.trainable_layers,
            config.text.finetune_learning_rate,
            config.regularization,
            frozen_groups=self.stage.frozen,
            frozen_towers=frozenset(config.tasks) - frozenset(self.train_task_names),
            shared_lr_scale=self.stage.shared_lr_scale,
        )
        self.rule = rule_from_config(config.balancing, self.train_task_names)

        # Shapes first: derive the state's shardings from an abstract init, then init under jit.
        sample = {f.name: jnp.asarray(f.placeholder()) for f in features}
        key = jax.random.PRNGKey(config.seed)
        self._init_fn = lambda k: self._init_state(k, sample)
        abstract = jax.eval_shape(self._init_fn, key)
        self.state_sharding = self._state_shardings(key, sample, abstract)
        replicated = parallel.replicated(self.mesh)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            self.state_sharding,
        )
        self._key = key
        if config.balancing.gramian_params:  # a pattern that matches nothing fails here
            scope_mask(abstract.params["trunk"], config.balancing.gramian_params)
        batch_sharding = parallel.batch_sharding(self.mesh)
        self.train_step = jax.jit(
            make_train_step(
                self.model,
                self.train_tasks,
                self.tx,
                self.rule,
                config.balancing.gramian_params,
                config.regularization.embedding_norm,
                self._distill(),
            ),
            in_shardings=(self.state_sharding, batch_sharding),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=(0,),
        )
        self.compiled_train_step = benchmark.CompiledOnce(self.train_step)  # the loop's
        self.eval_step = jax.jit(
            make_eval_step(self.model, self.tasks),
            in_shardings=(self.state_sharding.params, batch_sharding),
            out_shardings=(batch_sharding, replicated, replicated),
        )

        # Gate statistics cost one more forward pass per log step: only for gated trunks.
        gate_fn = make_gate_stats(self.model)
        has_gates = bool(jax.eval_shape(gate_fn, abstract.params, {"features": sample}))
        self.gate_stats = (
            jax.jit(
                gate_fn,
                in_shardings=(self.state_sharding.params, batch_sharding),
                out_shardings=replicated,
            )
            if has_gates
            else None
        )
        self.trunk_gramian = jax.jit(
            make_trunk_gramian(self.model, self.train_tasks),
            in_shardings=(self.state_sharding.params, batch_sharding),
            out_shardings=replicated,
        )

    def _state_shardings(self, key: jax.Array, sample: dict, abstract: TrainState) -> TrainState:
        """Parameters by the mesh's logical axis rules; each optimizer-state copy of the
        parameters like its parameters; everything else (counters, combiner state) whole."""
        boxed = jax.eval_shape(
            lambda k: self.model.init({"params": k}, sample, train=False)["params"], key
        )
        rules = dict(self.config.mesh.axis_rules)
        params = parallel.param_shardings(boxed, self.mesh, rules)
        replicated = parallel.replicated(self.mesh)
        opt_state = parallel.like_params(abstract.opt_state, abstract.params, params, replicated)
        whole = lambda tree: jax.tree.map(lambda _: replicated, tree)
        return TrainState(
            step=replicated,
            params=params,
            opt_state=opt_state,
            balancer=whole(abstract.balancer),
            rng=replicated,
            teacher=None if self.teacher is None else self.teacher.state_sharding.params,
        )

    def _init_state(self, key: jax.Array, sample: dict) -> TrainState:
        # Unboxed: the logical axis names only serve ``_state_shardings``.
        params = nn.meta.unbox(self.model.init({"params": key}, sample, train=False)["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            balancer=balancing.init_state(
                self.rule, len(self.train_tasks), self.config.seed, params["trunk"]
            ),
            rng=jax.random.fold_in(key, 1),
            teacher=None
            if self.teacher is None
            else jax.tree.map(
                lambda a: jnp.zeros(a.shape, a.dtype), self.teacher.abstract_state.params
            ),
        )

    def begin_stage(self, state: TrainState) -> TrainState:
        """The state entering this trainer's stage: the same parameters, step and keys, a
        fresh optimizer state (for this stage's groups) and balancing state (its tasks)."""

        def fresh(params):
            balancer = balancing.init_state(
                self.rule, len(self.train_tasks), self.config.seed, params["trunk"]
            )
            return self.tx.init(params), balancer

        opt_state, balancer = jax.jit(
            fresh, out_shardings=(self.state_sharding.opt_state, self.state_sharding.balancer)
        )(state.params)
        return state.replace(opt_state=opt_state, balancer=balancer)

    def _distill(self) -> tuple[MultiTaskModel, float, float] | None:
        if self.teacher is None:
            return None
        d = self.config.distill
        return self.teacher.model, float(d.alpha), float(d.temperature)

    def _load_teacher(self, mesh: jax.sharding.Mesh) -> Trainer | None:
        """The teacher of a distillation run: its config from ``distill.teacher_workdir``,
        rebuilt over the same dataset; its best parameters are restored in init_state."""
        workdir = self.config.distill.teacher_workdir
        if not workdir:
            return None
        path = pathlib.Path(workdir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(
                f"distill.teacher_workdir={workdir!r} has no config.json; train the teacher "
                "there first (python run.py --config=... --workdir=...)"
            )
        saved = json.loads(path.read_text())
        missing = sorted(set(self.config.tasks) - set(saved["tasks"]))
        if missing:
            raise ValueError(f"the teacher in {workdir} was not trained on tasks {missing}")
        # The student's config with the teacher's architecture: what decides its forward pass.
        teacher_config = self.config.copy_and_resolve_references()
        with teacher_config.unlocked():
            for section in ("model", "text", "task_loss"):
                teacher_config[section].update(_tuples(saved[section]))
            teacher_config.input_features = tuple(saved["input_features"])
            teacher_config.distill.teacher_workdir = ""
        return Trainer(teacher_config, self.dataset, mesh=mesh)

    def init_state(self) -> TrainState:
        state = jax.jit(self._init_fn, out_shardings=self.state_sharding)(self._key)
        if self.teacher is not None:
            ckpt = Checkpointer(self.config.distill.teacher_workdir)
            try:
                teacher = ckpt.restore_best(self.teacher.abstract_state.params)
            finally:
                ckpt.close()
            state = state.replace(teacher=teacher)
        replace = {}
        if self.config.model.zero_unseen_ids:
            replace.update(self._zeroed_unseen_rows(state.params.get("embedding", {})))
        if self.config.text.features:
            # The pretrained parts: text vectors or token ids per id, the encoder's weights.
            replace.update(self.text.pretrained_params(self.config.text, self.dataset))
        if not replace:
            return state
        embedding = dict(state.params["embedding"])
        shardings = self.state_sharding.params["embedding"]
        for key, value in replace.items():
            got, want = jax.tree.map(np.shape, value), jax.tree.map(np.shape, embedding[key])
            if got != want:
                raise ValueError(f"pretrained {key}: shapes {got}, the model expects {want}")
            embedding[key] = jax.device_put(value, shardings[key])
        return state.replace(params={**state.params, "embedding": embedding})

    def _zeroed_unseen_rows(self, embedding: dict) -> dict[str, Any]:
        """Id tables with the rows of ids that never occur in the train split set to zero."""
        out = {}
        for spec in self.dataset.features:
            if spec.name not in embedding or spec.is_dense:
                continue
            seen = np.zeros(spec.vocab_size, bool)
            seen[np.asarray(self.dataset.train.features[spec.name])] = True
            table = np.asarray(jax.device_get(embedding[spec.name]["embedding"]))
            out[spec.name] = {"embedding": np.where(seen[:, None], table, 0.0).astype(table.dtype)}
        return out

    def train_iterator(self, num_steps: int | None = None):
        t = self.config.train
        return train_iterator(
            self.dataset.train,
            batch_size=t.batch_size,
            num_steps=num_steps or t.num_steps,
            seed=self.config.seed,
        )

    def predict(
        self, params: Any, split: Split, eval_fn: Callable | None = None, batch_axis: int = 0
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Predictions for every example of ``split`` and the mean loss per task (T,).
        ``eval_fn``: another eval step (e.g. vmapped over seeds, mtl_jax/seeds.py) whose
        outputs carry the examples on ``batch_axis`` and the losses on the last axis."""
        eval_fn = eval_fn or self.eval_step
        outputs, sums, counts = [], 0.0, 0.0
        for local in eval_batches(split, self.config.train.eval_batch_size):
            preds, s, c = eval_fn(params, parallel.to_global_batch(local, self.mesh))
            outputs.append(preds)
            sums, counts = sums + s, counts + c
        host = parallel.to_host(outputs)
        rows = (slice(None),) * batch_axis + (slice(len(split)),)  # drop the padding
        predictions = {
            t.name: np.concatenate([o[t.name] for o in host], axis=batch_axis)[rows]
            for t in self.tasks
        }
        return predictions, np.asarray(sums) / np.maximum(np.asarray(counts), 1.0)

    def evaluate(self, params: Any, split: Split) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` on the labelled examples of ``split``."""
        return task_metrics(self.tasks, split, *self.predict(params, split))


def task_metrics(
    tasks: Sequence[TaskSpec], split: Split, predictions: dict[str, np.ndarray], losses: Any
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value, "loss": mean loss}}`` from one model's predictions."""
    return {
        t.name: {**score_task(t, split, predictions[t.name]), "loss": float(losses[i])}
        for i, t in enumerate(tasks)
    }


def calibration(
    tasks: Sequence[TaskSpec], split: Split, predictions: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """ECE and predicted / observed rate of every binary task on ``split``."""
    out = {}
    for t in tasks:
        if t.kind != "binary":
            continue
        mask = split.masks[t.name] > 0
        labels, probs = split.labels[t.name][mask], predictions[t.name][mask]
        out[t.name] = {
            "ece": metrics_lib.expected_calibration_error(labels, probs),
            "predicted_over_observed": metrics_lib.predicted_over_observed(labels, probs),
        }
    return out


def score_task(task: TaskSpec, split: Split, predictions: np.ndarray) -> dict[str, float]:
    mask = split.masks[task.name] > 0
    return tasks_lib.evaluate(task, split.labels[task.name][mask], predictions[mask])


def reference_metrics(
    tasks: Sequence[TaskSpec], dataset: MultiTaskDataset, split: Split
) -> tuple[dict, dict]:
    """Metrics of the simulator's oracle and of the trivial (train-prior) predictor."""
    oracle = {
        t.name: score_task(t, split, split.oracle[t.name]) for t in tasks if t.name in split.oracle
    }
    trivial = {}
    for t in tasks:
        train_mask = dataset.train.masks[t.name] > 0
        preds = tasks_lib.trivial_predictions(
            t, dataset.train.labels[t.name][train_mask], len(split)
        )
        trivial[t.name] = score_task(t, split, preds)
    return oracle, trivial


def track_best(meta: dict[str, Any], value: float, step: int, higher_is_better: bool) -> bool:
    """Records a validation value in a run's ``meta`` (best_value, best_step,
    evals_without_improvement); True if it is the new best."""
    if is_better(value, meta["best_value"], higher_is_better):
        meta.update(best_value=value, best_step=step, evals_without_improvement=0)
        return True
    meta["evals_without_improvement"] += 1
    return False


def is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def _format_task_metrics(metrics: dict[str, dict[str, float]]) -> str:
    return " | ".join(
        f"{task} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "loss")
        for task, m in metrics.items()
    )


def load_run_dataset(config: ml_collections.ConfigDict) -> MultiTaskDataset:
    """The dataset a run trains on, drawn with ``configlib.data_seed``; with ``cv.folds``,
    the chosen fold of the train split validates and the rest trains."""
    log.info("building dataset %s", config.data.name)
    seed = configlib.data_seed(config)
    dataset = load_dataset(config.data, seed)
    if config.cv.folds:
        dataset = cross_validation_fold(dataset, config.cv.folds, config.cv.fold, seed)
        log.info("cross-validation: fold %d of %d validates", config.cv.fold, config.cv.folds)
    return dataset


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, max_steps_this_run: int | None = None
) -> dict[str, Any] | None:
    """Trains (or resumes) the configured run in ``workdir`` and returns its results dict.

    Writes ``config.json``, ``metrics.jsonl``, ``results.json`` and Orbax checkpoints into
    ``workdir``. Running again on a finished workdir re-reports without training.

    Args:
      config: a validated, locked config (see ``configs/``).
      workdir: where checkpoints, metrics and results go; resumed from if it holds a run.
      max_steps_this_run: train at most this many steps in this call, then checkpoint and
        return None; a later call resumes. For time-sliced queues (and resume tests).

    SIGTERM during training (a cloud VM's preemption notice) checkpoints at the next step
    boundary and returns None, so the process can exit 0 and a rerun resumes exactly.
    """
    with PreemptionWatch() as preemption:
        return _train_and_evaluate(config, workdir, max_steps_this_run, preemption)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    max_steps_this_run: int | None,
    preemption: PreemptionWatch,
) -> dict[str, Any] | None:
    start_time = time.perf_counter()
    configlib.validate(config)
    workdir_path = pathlib.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    config_dict = configlib.to_dict(config)
    t = config.train

    ckpt = Checkpointer(workdir_path, config.checkpoint.max_to_keep, config.checkpoint.async_save)
    latest = ckpt.latest_step()
    if latest is not None:  # fail fast on a config mismatch, before building anything
        try:
            ckpt.check_compatible(latest, config_dict)
        except IncompatibleCheckpointError:
            raise
        except Exception:  # noqa: BLE001 - unreadable: restore_newest below deals with it
            pass

    dataset = load_run_dataset(config)
    plan = stages_lib.plan(config)
    trainers: dict[int, Trainer] = {}

    def trainer_at(step: int) -> Trainer:
        """The trainer of the stage a checkpoint at ``step`` belongs to (built once)."""
        index = stages_lib.index_at(plan, step)
        if index not in trainers:
            trainers[index] = Trainer(config, dataset, stage=index)
        return trainers[index]

    trainer = trainer_at(latest or 0)
    log.info(
        "dataset sizes %s; mesh %s; %d tasks %s",
        dataset.sizes(),
        dict(trainer.mesh.shape),
        len(trainer.tasks),
        [task.name for task in trainer.tasks],
    )
    sharded = parallel.sharded_params(trainer.state_sharding.params)
    if trainer.mesh.size > 1:
        log.info("parameters split over the mesh: %s", "; ".join(sharded) or "none (replicated)")
    data_iter = trainer.train_iterator()
    metrics_log = reporting.MetricsLog(workdir_path / "metrics.jsonl")
    restored = (
        ckpt.restore_newest(lambda s: trainer_at(s).abstract_state, data_iter, config_dict)
        if latest is not None
        else None
    )
    if restored is not None:
        latest, state, meta = restored
        trainer = trainer_at(latest)
        metrics_log.truncate_after(latest)
        log.info("resumed from step %d in %s", latest, workdir_path)
    else:
        state = trainer.init_state()
        meta = {
            "step": 0,
            "best_value": None,
            "best_step": None,
            "evals_without_improvement": 0,
            "finished": False,
            "config": config_dict,
        }
        if reporting.is_lead_process():
            reporting.write_json(workdir_path / "config.json", config_dict)
            if metrics_log.path.exists():
                metrics_log.path.unlink()

    task_name, _, metric_name = t.early_stopping_metric.partition("/")
    higher_is_better = {tk.name: tk for tk in trainer.tasks}[task_name].higher_is_better[
        metric_name
    ]
    step = start_step = int(meta["step"])
    throughput = reporting.Throughput(step, t.num_steps, t.batch_size)
    if not meta["finished"]:
        log.info("training from step %d to %d", step, t.num_steps)
        if len(plan) > 1:
            log.info(
                "stage %s (steps %d-%d)", trainer.stage.name, trainer.stage.start, trainer.stage.end
            )
    while not meta["finished"]:
        batch = parallel.to_global_batch(next(data_iter), trainer.mesh)
        state, train_metrics = trainer.compiled_train_step(state, batch)
        step += 1
        last = step >= t.num_steps
        if step % t.log_every == 0 or last:
            host = _fetch_finite(train_metrics, step, trainer.train_task_names, ckpt)
            gram = host.get("gram")
            if gram is None:  # loss-weighting methods: one extra backward, on log steps only
                gram = jax.device_get(trainer.trunk_gramian(state.params, batch))
            diagnostics = gradient_diagnostics(gram, host["weights"], trainer.train_task_names)
            gates = (
                gate_stats.summarize(jax.device_get(trainer.gate_stats(state.params, batch)))
                if trainer.gate_stats is not None
                else {}
            )
            speed = throughput.mark(step)
            record = {
                "step": step,
                "split": "train",
                "loss": host["loss"],
                "grad_norm": host["grad_norm"],
                **{
                    f"{n}/loss": v
                    for n, v in zip(trainer.train_task_names, host["task_losses"], strict=True)
                },
                **diagnostics,
                **gates,
                **speed,
            }
            metrics_log.write(record)
            speed_text = (
                f" | {speed['steps_per_s']:.1f} steps/s {speed['examples_per_s']:,.0f} ex/s "
                f"ETA {reporting.format_eta(speed['eta_s'])}"
                if speed
                else ""
            )
            log.info("step %d/%d | loss %.4f%s", step, t.num_steps, host["loss"], speed_text)
            if step % (t.log_every * 10) == 0 or last:
                log.info("  %s", _format_diagnostics(diagnostics, trainer.train_task_names))
                if gates:
                    log.info("  gates %s", " ".join(f"{k[6:]}={v:.3f}" for k, v in gates.items()))

        if not last and step == trainer.stage.end:  # next stage: its optimizer and tasks
            _fetch_finite(train_metrics, step, trainer.train_task_names, ckpt)
            trainer = trainer_at(step)
            state = trainer.begin_stage(state)
            log.info(
                "stage %s (steps %d-%d): tasks %s, frozen %s, shared lr x%g",
                trainer.stage.name, trainer.stage.start, trainer.stage.end,
                list(trainer.train_task_names), sorted(trainer.stage.frozen) or "none",
                trainer.stage.shared_lr_scale,
            )  # fmt: skip
        if step % t.eval_every == 0 or last:
            val = trainer.evaluate(state.params, dataset.validation)
            value = val[task_name][metric_name]
            improved = track_best(meta, value, step, higher_is_better)
            if improved:
                ckpt.save_best(step, state.params)
            in_last_stage = trainer.stage_index == len(plan) - 1
            stop = in_last_stage and meta["evals_without_improvement"] >= t.patience
            meta.update(step=step, finished=last or stop, stage=trainer.stage.name)
            metrics_log.write({"step": step, "split": "validation", "metrics": val})
            log.info(
                "validation step %d: %s%s",
                step,
                _format_task_metrics(val),
                " (best)" if improved else "",
            )
            if step % t.checkpoint_every == 0 or meta["finished"]:
                _fetch_finite(train_metrics, step, trainer.train_task_names, ckpt)  # no NaN saves
                ckpt.save(step, state, data_iter, meta)
            if stop and not last:
                log.info(
                    "early stopping at step %d: %s has not improved for %d evaluations "
                    "(best %.4f at step %d)",
                    step,
                    t.early_stopping_metric,
                    t.patience,
                    meta["best_value"],
                    meta["best_step"],
                )
            throughput.restart(step)
        budget_spent = max_steps_this_run is not None and step - start_step >= max_steps_this_run
        preempted = preemption.reached(step)
        if (budget_spent or preempted) and not meta["finished"]:
            if ckpt.latest_step() != step:
                _fetch_finite(train_metrics, step, trainer.train_task_names, ckpt)
                ckpt.save(step, state, data_iter, {**meta, "step": step})
            ckpt.wait()
            ckpt.close()
            log.info(
                "%s after %d steps this run; rerun to resume at step %d",
                "preempted: checkpointed and stopping" if preempted else "stopping",
                step - start_step,
                step,
            )
            return None
    ckpt.wait()

    best_params = ckpt.restore_best(trainer.abstract_state.params)
    results = final_results(
        trainer,
        dataset,
        best_params,
        meta,
        {
            "train_examples_per_s": throughput.examples_per_s,
            "median_step_ms": throughput.median_step_ms,
            "wall_time_s": time.perf_counter() - start_time,
            "train_step_memory": trainer.compiled_train_step.memory,
        },
    )
    if reporting.is_lead_process():
        reporting.write_json(workdir_path / "results.json", results)
    ckpt.close()
    return results


def final_results(
    trainer: Trainer,
    dataset: MultiTaskDataset,
    best_params: Any,
    meta: dict[str, Any],
    measured: dict[str, Any],
) -> dict[str, Any]:
    """The results.json of a finished run: validation and test metrics of the best-on-
    validation parameters, references, calibration, subsets, ranking; logged as it goes.
    ``meta``: the run's best_step, best_value and step; ``measured``: throughput, wall
    time and the train step's memory estimate."""
    config, t = trainer.config, trainer.config.train
    validation = trainer.evaluate(best_params, dataset.validation)
    test = trainer.evaluate(best_params, dataset.test)
    oracle, trivial = reference_metrics(trainer.tasks, dataset, dataset.test)
    results = {
        "config": configlib.to_dict(config),
        "commit": reporting.git_commit(),
        "dataset_sizes": dataset.sizes(),
        "best_step": meta["best_step"],
        "best_validation": {t.early_stopping_metric: meta["best_value"]},
        "validation": validation,
        "steps_trained": meta["step"],
        "early_stopped": meta["step"] < t.num_steps,
        "test": test,
        "oracle": oracle,
        "trivial": trivial,
        **measured,
        "peak_rss_mb": reporting.peak_rss_mb(),
        "num_devices": trainer.mesh.size,
    }
    log.info("test metrics (best validation step %s):", meta["best_step"])
    for task in trainer.tasks:
        name = task.name
        ref = f"  oracle {_fmt(oracle[name])}" if name in oracle else ""
        log.info("  %-9s %s  | trivial %s%s", name, _fmt(test[name]), _fmt(trivial[name]), ref)
    results["calibration"] = calibration(
        trainer.tasks, dataset.test, trainer.predict(best_params, dataset.test)[0]
    )
    for name, c in results["calibration"].items():
        log.info(
            "  %-9s calibration: ECE %.4f, predicted/observed %.3f",
            name, c["ece"], c["predicted_over_observed"],
        )  # fmt: skip
    for split_name, subsets in (
        ("validation", dataset.validation_subsets),
        ("test", dataset.test_subsets),
    ):
        if not subsets:
            continue
        out = results[f"{split_name}_subsets"] = {}
        for subset, rows in subsets.items():
            metrics = trainer.evaluate(best_params, dataset.split(split_name).take(rows))
            out[subset] = {"examples": len(rows), **metrics}
            log.info(
                "  %s (%d %s rows): %s",
                subset, len(rows), split_name, _format_task_metrics(metrics),
            )  # fmt: skip
    if config.ranking.enabled:
        log.info("ranking the catalogue for every test user ...")
        results["ranking"] = ranking.evaluate_ranking(
            lambda split: trainer.predict(best_params, split)[0], dataset, config.ranking
        )
        log.info("test ranking (%s):", results["ranking"]["setup"])
        for line in ranking.format_ranking(results["ranking"]):
            log.info("  %s", line)
    return results


def _format_diagnostics(diagnostics: dict, names: Sequence[str]) -> str:
    weights = " ".join(f"{n}={diagnostics[f'{n}/weight']:.3g}" for n in names)
    norms = " ".join(f"{n}={diagnostics[f'{n}/grad_norm']:.3g}" for n in names)
    cosines = [v for k, v in diagnostics.items() if k.startswith("cos/")]
    worst = min(cosines) if cosines else float("nan")
    return f"weights {weights} | trunk grad norms {norms} | min pairwise cos {worst:+.3f}"


def _fetch_finite(
    train_metrics: dict, step: int, task_names: Sequence[str], ckpt: Checkpointer
) -> dict:
    """Host copy of a step's metrics; raises if the loss diverged (NaN params stay NaN, so a
    finite loss at a save step means the state being saved is good)."""
    host = jax.device_get(train_metrics)
    raise_if_diverged(host["loss"], host["task_losses"], step, task_names, ckpt)
    return host


def raise_if_diverged(
    loss: Any,
    task_losses: Any,
    step: int,
    task_names: Sequence[str],
    ckpt: Checkpointer,
    who: str = "",
) -> None:
    """``NonFiniteLossError`` naming the task losses and the intact last checkpoint, if
    ``loss`` is not finite (``who``: a prefix such as "seed 3: ")."""
    if np.isfinite(loss):
        return
    ckpt.wait()
    losses = dict(zip(task_names, np.asarray(task_losses).tolist(), strict=True))
    raise NonFiniteLossError(
        f"{who}loss became {loss} at step {step} (task losses {losses}); the last good "
        f"checkpoint (step {ckpt.latest_step()}) is intact in {ckpt.directory}. Lower "
        "optim.learning_rate or check the data."
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "loss")
