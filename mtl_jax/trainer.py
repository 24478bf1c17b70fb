"""The trainer of one configured run: model, optimizer, shardings and the compiled steps.

``Trainer(config, dataset)`` builds the model and its partitioned optimizer, derives the
state's shardings from an abstract init, and jits the train, eval and diagnostic steps;
``init_state``, ``predict`` and ``evaluate`` use them. The loop (mtl_jax/loop.py) drives it.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mtl_jax import balancing, benchmark, configlib, guards, parallel
from mtl_jax import stages as stages_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax.balancing.config import rule_from_config
from mtl_jax.checkpoint import Checkpointer
from mtl_jax.data import MultiTaskDataset, Split, load_dataset
from mtl_jax.data import negatives as negatives_lib
from mtl_jax.data.pipeline import check_batch_divides, eval_batches, train_iterator
from mtl_jax.data.schema import cross_validation_fold
from mtl_jax.data.validation import validate_dataset
from mtl_jax.errors import UserError
from mtl_jax.evaluation import task_metrics
from mtl_jax.models import MultiTaskModel
from mtl_jax.models.gate_stats import make_gate_stats
from mtl_jax.models.lm_trunk import LMTrunkSpec
from mtl_jax.models.model import esmm_tasks
from mtl_jax.optim import group_peaks, learning_rates, make_optimizer, settle_lazy_l2
from mtl_jax.step import (
    TrainState,
    make_eval_step,
    make_train_step,
    make_trunk_gramian,
    scope_mask,
    settling,
    split_frozen,
)
from mtl_jax.tasks import TaskSpec
from mtl_jax.text import features as text_features
from mtl_jax.text import lm as lm_lib
from mtl_jax.text import prompts
from mtl_jax.text.decoder import LoRAConfig

log = logging.getLogger("mtl_jax")


def configured_tasks(config: ml_collections.ConfigDict, dataset: MultiTaskDataset):
    """The run's tasks, in config order, with the config's per-task loss options."""
    by_name = {t.name: t for t in dataset.tasks}
    return tuple(
        tasks_lib.with_loss_options(by_name[name], config.task_loss[name]) for name in config.tasks
    )


def output_biases(
    tasks: Sequence[TaskSpec],
    train: Split,
    esmm: tuple[str, str] = ("", ""),
    logits: dict[str, float] | None = None,
) -> tuple[tuple[float, ...], ...]:
    """Initial output biases that make the untrained model predict the train prior.

    Without them a rating head starts near 0 while ratings average ~4, and its huge early
    loss swamps the other tasks' gradients for the first few hundred steps. Under ESMM the
    conversion tower starts at P(ctcvr) / P(ctr), so that its product with pCTR does.
    ``logits``: binary tasks' starting logits where the train split's labels do not give
    them (an implicit task trained with sampled negatives, mtl_jax/data/negatives.py).
    """
    ctr, ctcvr = esmm
    out = []
    for task in tasks:
        if logits and task.name in logits:
            out.append((float(logits[task.name]),))
            continue
        prior = train.prior(task)
        if task.name == ctcvr and ctr:
            ctr_rate = train.prior(next(t for t in tasks if t.name == ctr))
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
        try:  # mesh sizes and batch sizes that do not fit the devices are config errors
            self.mesh = (
                mesh
                if mesh is not None
                else parallel.make_mesh(config.mesh.num_devices or None, model=config.mesh.model)
            )
            n_data = parallel.data_axis_size(self.mesh)
            check_batch_divides(config.train.batch_size, n_data, "config.train.batch_size")
            check_batch_divides(
                config.train.eval_batch_size, n_data, "config.train.eval_batch_size"
            )
        except ValueError as e:
            text = str(e) if str(e).startswith("config.") else f"config.mesh: {e}"
            raise configlib.ConfigError(text) from e

        self.tasks = configured_tasks(config, dataset)
        self.negatives = negatives_lib.sampler(config, dataset)
        negative_logits = (
            {self.negatives.task: self.negatives.initial_logit()} if self.negatives else None
        )
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
        self.language_model = language_model(config)
        lm = self.language_model
        if lm is not None and lm.is_encoder and config.llm.dtype != "float32":
            raise configlib.ConfigError(
                f"config.llm.dtype: {config.llm.dtype!r} is for decoders; the BERT "
                "encoder of an LM trunk keeps float32 weights"
            )
        self.model = MultiTaskModel(
            features,
            self.tasks,
            config.model,
            output_biases(self.tasks, dataset.train, esmm_tasks(config.model), negative_logits),
            text_features=tuple((name, vocab[name]) for name in config.text.features),
            text_dim=text.dim,
            text_encoder=text.bert_config,
            text_token_length=text.token_length,
            text_trainable_layers=config.text.finetune_layers,
            language_model=lm_trunk_spec(config, self.language_model),
        )
        self.teacher = self._load_teacher(self.mesh)
        peaks = group_peaks(
            config.optim, self.stage.shared_lr_scale, config.text.finetune_learning_rate
        )
        trained = {"embeddings", "trunk", "heads"} - set(self.stage.frozen)
        if text.trainable_layers:
            trained.add("text_encoder")
        self._lr_peaks = {g: v for g, v in peaks.items() if g in trained}
        # Compiled at its first call (the first log step).
        self._learning_rates = learning_rates(config.optim, self.stage.steps, self._lr_peaks)
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
        self.rule = rule_from_config(config.balancing, self.train_task_names, config.tasks)

        # Shapes first: derive the state's shardings from an abstract init, then init under jit.
        sample = {k: jnp.asarray(v) for f in features for k, v in f.placeholder().items()}
        for name in config.text.features:  # a text column need not be an id input too
            sample.setdefault(name, jnp.zeros((1,), jnp.int32))
        if self.language_model is not None:
            if prompts.PROMPT not in dataset.train.features:
                raise configlib.ConfigError(
                    "model.trunk='llm' reads prompts the dataset lacks: load it with "
                    "trainer.load_run_dataset(config), which builds them"
                )
            width = dataset.train.features[prompts.PROMPT].shape[1]
            sample[prompts.PROMPT] = jnp.zeros((1, width), jnp.int32)
            sample[prompts.PROMPT_LENGTH] = jnp.ones((1,), jnp.int32)
        self.input_sample = sample  # one example of every column the model reads
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
            scope_mask(split_frozen(abstract.params)[0]["trunk"], config.balancing.gramian_params)
        batch_sharding = parallel.batch_sharding(self.mesh)
        # Sparse updates with a lazy L2 penalty on the tables (optim.settle_lazy_l2): the
        # step settles the rows it reads, and evaluation and checkpoints settle every row.
        self.lazy_l2_settle = settle_lazy_l2(
            config.optim, self.stage.steps, self.stage.shared_lr_scale
        )
        step_fn = make_train_step(
            self.model,
            self.train_tasks,
            self.tx,
            self.rule,
            config.balancing.gramian_params,
            config.regularization.embedding_norm,
            self._distill(),
            config.balancing.task_gradients,
            config.balancing.gramian_at,
            config.optim.sparse_embedding_updates,
            self.state_sharding,
            self.lazy_l2_settle,
        )
        self.train_step = jax.jit(
            step_fn,
            in_shardings=(self.state_sharding, batch_sharding),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=(0,),
        )
        # train.steps_per_dispatch = K > 1: one call runs K steps (a lax.scan over K stacked
        # batches), so the host dispatches, transfers and fetches once per K steps.
        self.steps_per_dispatch = config.train.steps_per_dispatch
        self.train_steps = jax.jit(
            lambda state, batches: jax.lax.scan(step_fn, state, batches),
            in_shardings=(self.state_sharding, parallel.stacked_batch_sharding(self.mesh)),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=(0,),
        )
        self.compiled_train_step = benchmark.CompiledOnce(  # the loop's
            self.train_steps if self.steps_per_dispatch > 1 else self.train_step
        )
        # With K > 1, the steps before a log, validation, stage change or the run's end
        # that K does not reach exactly run one per call (compiled when first needed).
        self.compiled_single_step = (
            benchmark.CompiledOnce(self.train_step)
            if self.steps_per_dispatch > 1
            else self.compiled_train_step
        )
        self._settle = (
            None
            if self.lazy_l2_settle is None
            else jax.jit(
                settling(self.lazy_l2_settle),
                in_shardings=(self.state_sharding,),
                out_shardings=self.state_sharding,
                donate_argnums=(0,),
            )
        )
        self.params_finite = jax.jit(
            guards.all_finite, in_shardings=(self.state_sharding.params,), out_shardings=replicated
        )
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
            make_trunk_gramian(self.model, self.train_tasks, config.balancing.task_gradients),
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
        trainable = split_frozen(params)[0]  # an LM trunk's base weights take no state
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(trainable),
            balancer=balancing.init_state(
                self.rule, len(self.train_tasks), self.config.seed, trainable["trunk"]
            ),
            rng=jax.random.fold_in(key, 1),
            teacher=None
            if self.teacher is None
            else jax.tree.map(
                lambda a: jnp.zeros(a.shape, a.dtype), self.teacher.abstract_state.params
            ),
        )

    def settle(self, state: TrainState) -> TrainState:
        """The state with every table row's pending L2 pulls applied (sparse updates with
        ``optim.embedding_l2``; otherwise the state itself)."""
        return state if self._settle is None else self._settle(state)

    def learning_rates(self, step: int) -> dict[str, float]:
        """The learning rate of each trained group at the update that made ``step`` (the
        optimizer state, and so the schedule, starts afresh with each stage)."""
        return self._learning_rates(step - 1 - self.stage.start)

    def begin_stage(self, state: TrainState) -> TrainState:
        """The state entering this trainer's stage: the same parameters, step and keys, a
        fresh optimizer state (for this stage's groups) and balancing state (its tasks)."""

        def fresh(params):
            trainable = split_frozen(params)[0]
            balancer = balancing.init_state(
                self.rule, len(self.train_tasks), self.config.seed, trainable["trunk"]
            )
            return self.tx.init(trainable), balancer

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
            for section in ("model", "text", "task_loss", "llm"):
                if section in saved:  # runs from before the LM trunk saved no "llm"
                    teacher_config[section].update(_tuples(saved[section]))
            teacher_config.input_features = tuple(saved["input_features"])
            teacher_config.distill.teacher_workdir = ""
        return Trainer(teacher_config, self.dataset, mesh=mesh)

    def best_params(self, workdir: str | pathlib.Path) -> Any:
        """The best parameters a run of this model saved in ``workdir`` (its ``best/``
        checkpoint), placed as this trainer's parameters are."""
        ckpt = Checkpointer(workdir)
        try:
            return ckpt.restore_best(self.abstract_state.params)
        finally:
            ckpt.close()

    def init_state(self) -> TrainState:
        state = jax.jit(self._init_fn, out_shardings=self.state_sharding)(self._key)
        if self.teacher is not None:
            teacher = self.teacher.best_params(self.config.distill.teacher_workdir)
            state = state.replace(teacher=teacher)
        state = self._with_pretrained_lm(state)
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

    def _with_pretrained_lm(self, state: TrainState) -> TrainState:
        """An LM trunk's base weights from its model directory, in place of the random
        ones (adapters and neck keep their initialisation); a preset keeps them all."""
        lm = self.language_model
        if lm is None:
            return state
        dtype = jnp.dtype(self.config.llm.dtype) if not lm.is_encoder else np.float32
        loaded = lm.pretrained_params(dtype)
        if loaded is None:
            return state
        flat = traverse_util.flatten_dict(state.params["trunk"]["lm"], sep="/")
        base = traverse_util.flatten_dict(loaded, sep="/")
        shardings = traverse_util.flatten_dict(self.state_sharding.params["trunk"]["lm"], sep="/")
        missing = sorted(p for p in flat if p not in base and "/lora_" not in f"/{p}")
        extra = sorted(set(base) - set(flat))
        if missing or extra:
            raise ValueError(
                f"the LM weights in {lm.model_dir} do not fit the trunk: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        for path, value in base.items():
            if tuple(value.shape) != tuple(flat[path].shape):
                raise ValueError(
                    f"LM weight {path}: shape {tuple(value.shape)} in {lm.model_dir}, the "
                    f"trunk expects {tuple(flat[path].shape)}"
                )
            flat[path] = jax.device_put(np.asarray(value, flat[path].dtype), shardings[path])
        trunk = {**state.params["trunk"], "lm": traverse_util.unflatten_dict(flat, sep="/")}
        return state.replace(params={**state.params, "trunk": trunk})

    def _zeroed_unseen_rows(self, embedding: dict) -> dict[str, Any]:
        """Id tables with the rows of ids that never occur in the train split set to zero."""
        out = {}
        if not isinstance(self.dataset.train, Split):
            raise configlib.ConfigError(
                "model.zero_unseen_ids needs the train split in memory; it is streamed "
                "(data.prepared)"
            )
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
            window_blocks=self.config.data.get("window_blocks", 64),
            transform=self.negatives.train_batch if self.negatives else None,
        )

    def evaluation_split(self, split: Split) -> Split:
        """``split`` as it is evaluated: with the implicit task's sampled negatives (drawn
        from the data seed, so every seed of a study is scored on the same rows), or as it
        is."""
        if self.negatives is None:
            return split
        return self.negatives.evaluation_split(split, configlib.data_seed(self.config))

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
        """``{task: {metric: value}}`` on the labelled examples of ``split`` (with the
        implicit task's negatives, ``evaluation_split``)."""
        split = self.evaluation_split(split)
        return task_metrics(self.tasks, split, *self.predict(params, split))


def load_run_dataset(config: ml_collections.ConfigDict) -> MultiTaskDataset:
    """The dataset a run trains on, drawn with ``configlib.data_seed``; with ``cv.folds``,
    the chosen fold of the train split validates and the rest trains."""
    log.info("building dataset %s", config.data.name)
    seed = configlib.data_seed(config)
    try:
        dataset = load_dataset(config.data, seed, config.get("features"))
    except UserError:
        raise
    except ValueError as e:  # a builder's own check of its arguments
        raise configlib.ConfigError(f"config.data ({config.data.name}): {e}") from e
    validate_dataset(dataset)
    if config.cv.folds:
        dataset = cross_validation_fold(dataset, config.cv.folds, config.cv.fold, seed)
        log.info("cross-validation: fold %d of %d validates", config.cv.fold, config.cv.folds)
    n = config.get("negatives")
    if n is not None and n.task and n.validation_positives:
        dataset = negatives_lib.with_validation_positives(dataset, n.task)
    return with_lm_prompts(config, dataset)


def language_model(config: ml_collections.ConfigDict) -> lm_lib.LanguageModel | None:
    """The LM of an LM trunk (``model.trunk="llm"``), else None."""
    if config.model.trunk != configlib.LM_TRUNK:
        return None
    return lm_lib.language_model(config.text.model_dir, config.llm.preset)


def lm_trunk_spec(
    config: ml_collections.ConfigDict, lm: lm_lib.LanguageModel | None
) -> LMTrunkSpec | None:
    """What the model needs of the ``llm`` section: the backbone, adapters, pooling."""
    if lm is None:
        return None
    c = config.llm
    lora = LoRAConfig(
        rank=c.lora.rank,
        alpha=c.lora.alpha,
        targets=tuple(c.lora.targets),
        task_sets=len(config.tasks) if c.lora.per_task else 0,
        layers=c.lora.layers,
    )
    return LMTrunkSpec(lm.config, lora, c.pooling, c.dtype, c.remat)


def with_lm_prompts(
    config: ml_collections.ConfigDict, dataset: MultiTaskDataset
) -> MultiTaskDataset:
    """With an LM trunk, the dataset with every split's prompts (mtl_jax/text/prompts.py),
    at most ``llm.max_tokens`` and the model's positions long; otherwise the dataset."""
    lm = language_model(config)
    if lm is None:
        return dataset
    max_tokens = min(config.llm.max_tokens, lm.max_positions)
    return prompts.with_prompts(dataset, lm.tokenizer, config.llm.history, max_tokens)
