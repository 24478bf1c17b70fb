"""Task kinds: their output sizes, masked losses, predictions and host-side metrics.

A task's loss on a batch travels as a mergeable ``(sum, count)`` pair over the examples that
carry its label, so examples without a label (a rating exists only for a purchase) add
nothing, and partial sums from many devices or batches merge exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import metrics as metrics_lib

TASK_KINDS = ("binary", "regression", "multiclass", "multilabel")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One prediction target.

    Attributes:
      name: key of the task's labels, masks and outputs.
      kind: one of ``TASK_KINDS``.
      num_classes: number of classes (``multiclass``) or labels (``multilabel``).
      pos_weight: ``binary`` / ``multilabel``: the loss of a positive label is multiplied by
        this (> 1 counters rare positives, as in ``BCEWithLogits(pos_weight=...)``).
      class_weights: ``multiclass``: one loss multiplier per class; empty = all 1.
      focal_gamma: ``binary`` / ``multilabel``: focal loss (Lin et al. 2017), each example's
        cross-entropy times ``(1 - p_t) ** gamma``; 0 = plain cross-entropy.
      negative_rate: ``binary``: in training, each negative example of this task is kept with
        this probability (a fresh draw every step); predictions and evaluation add
        ``log(negative_rate)`` to the logit, the exact correction that keeps probabilities
        calibrated (``p = q r / (q r + 1 - q)``). 1 = no down-sampling.
    """

    name: str
    kind: str
    num_classes: int = 0
    pos_weight: float = 1.0
    class_weights: tuple[float, ...] = ()
    focal_gamma: float = 0.0
    negative_rate: float = 1.0

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; valid: {TASK_KINDS}")
        if self.kind in ("multiclass", "multilabel") and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: {self.kind} needs num_classes >= 2")
        if self.pos_weight <= 0:
            raise ValueError(f"task {self.name!r}: pos_weight must be > 0, got {self.pos_weight}")
        if self.pos_weight != 1.0 and self.kind not in ("binary", "multilabel"):
            raise ValueError(
                f"task {self.name!r}: pos_weight applies to binary and multilabel tasks, "
                f"not {self.kind}"
            )
        if self.class_weights:
            if self.kind != "multiclass" or len(self.class_weights) != self.num_classes:
                raise ValueError(
                    f"task {self.name!r}: class_weights needs a multiclass task and one weight "
                    f"per class ({self.num_classes}); got {len(self.class_weights)} for a "
                    f"{self.kind} task"
                )
            if min(self.class_weights) <= 0:
                raise ValueError(f"task {self.name!r}: class_weights must be > 0")
        if self.focal_gamma < 0 or (self.focal_gamma and self.kind not in ("binary", "multilabel")):
            raise ValueError(
                f"task {self.name!r}: focal_gamma must be >= 0 and applies to binary and "
                f"multilabel tasks; got {self.focal_gamma} for a {self.kind} task"
            )
        if not 0 < self.negative_rate <= 1 or (self.negative_rate < 1 and self.kind != "binary"):
            raise ValueError(
                f"task {self.name!r}: negative_rate must lie in (0, 1] and applies to binary "
                f"tasks; got {self.negative_rate} for a {self.kind} task"
            )

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.kind in ("multiclass", "multilabel") else 1

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {name: hib for name, (_, hib) in METRICS[self.kind].items()}


def with_loss_options(task: TaskSpec, options: Any) -> TaskSpec:
    """``task`` with a config's ``task_loss.<task>`` section (pos_weight, class_weights)
    applied; invalid options raise ``ValueError`` naming the task."""
    return dataclasses.replace(
        task,
        pos_weight=float(options.pos_weight),
        class_weights=tuple(float(w) for w in options.class_weights),
        focal_gamma=float(options.get("focal_gamma", 0.0)),
        negative_rate=float(options.get("negative_rate", 1.0)),
    )


def calibrated_logits(task: TaskSpec, logits: jax.Array) -> jax.Array:
    """Logits on the real distribution: undoes the prior shift of negative down-sampling."""
    if task.negative_rate < 1.0:
        return logits + jnp.log(jnp.asarray(task.negative_rate, logits.dtype))
    return logits


def per_example_loss(task: TaskSpec, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Loss of each example, shape (B,). ``logits`` are (B,) or (B, C) for multiclass."""
    if task.kind in ("binary", "multilabel"):
        labels = labels.astype(logits.dtype)
        loss = optax.sigmoid_binary_cross_entropy(logits, labels)
        if task.focal_gamma > 0:
            p = jax.nn.sigmoid(logits)
            p_true = p * labels + (1.0 - p) * (1.0 - labels)
            loss = loss * (1.0 - p_true) ** task.focal_gamma
        if task.pos_weight != 1.0:
            loss = loss * (1.0 + (task.pos_weight - 1.0) * labels)
        # multilabel: mean over labels, so the scale does not grow with C
        return loss if task.kind == "binary" else loss.mean(-1)
    if task.kind == "regression":
        return jnp.square(logits - labels.astype(logits.dtype))
    labels = labels.astype(jnp.int32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if task.class_weights:
        loss = loss * jnp.asarray(task.class_weights, loss.dtype)[labels]
    return loss


def distillation_loss(
    task: TaskSpec, logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
    """Per-example loss against a teacher's soft targets (Hinton et al. 2015): cross-entropy
    between the temperature-softened teacher and student distributions, times T^2 (so its
    gradients keep their scale as T grows); squared error to the teacher's value for
    regression. Both are calibrated first, so a down-sampled task compares probabilities."""
    logits = calibrated_logits(task, logits)
    teacher_logits = jax.lax.stop_gradient(calibrated_logits(task, teacher_logits))
    if task.kind == "regression":
        return jnp.square(logits - teacher_logits)
    t = temperature
    if task.kind == "multiclass":
        soft = jax.nn.softmax(teacher_logits / t, axis=-1)
        return optax.softmax_cross_entropy(logits / t, soft) * t**2
    loss = optax.sigmoid_binary_cross_entropy(logits / t, jax.nn.sigmoid(teacher_logits / t))
    loss = loss * t**2
    return loss if task.kind == "binary" else loss.mean(-1)


def masked_loss_sum(
    task: TaskSpec,
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    sample_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(sum of losses over labelled examples, number of labelled examples)``.

    With ``sample_key`` (training), a down-sampled task keeps each negative with probability
    ``negative_rate`` and its raw logits are scored; without (evaluation), every labelled
    example counts and the logits are calibrated first.
    """
    mask = mask.astype(jnp.float32)
    if sample_key is None:
        logits = calibrated_logits(task, logits)
    elif task.negative_rate < 1.0:
        keep = jax.random.bernoulli(sample_key, task.negative_rate, mask.shape)
        mask = mask * jnp.where(labels > 0, 1.0, keep.astype(jnp.float32))
    # An unlabelled example may carry any placeholder (even NaN): replace it before the loss,
    # since a NaN there would leak into the gradient even through a zero mask.
    row_mask = mask.reshape(mask.shape + (1,) * (jnp.ndim(labels) - 1))  # multilabel: (B, 1)
    labels = jnp.where(row_mask > 0, labels, jnp.zeros_like(labels))
    loss = per_example_loss(task, logits, labels).astype(jnp.float32)
    return jnp.sum(loss * mask), jnp.sum(mask)


def predict(task: TaskSpec, logits: jax.Array) -> jax.Array:
    """What a user reads off the head: a probability, a value, or class probabilities."""
    if task.kind in ("binary", "multilabel"):
        return jax.nn.sigmoid(calibrated_logits(task, logits))
    if task.kind == "regression":
        return logits
    return jax.nn.softmax(logits, axis=-1)


# name -> (function(labels, predictions), higher is better)
METRICS: dict[str, dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]]] = {
    "binary": {"auc": (metrics_lib.auc, True), "logloss": (metrics_lib.logloss, False)},
    "regression": {"rmse": (metrics_lib.rmse, False), "mae": (metrics_lib.mae, False)},
    "multiclass": {
        "accuracy": (metrics_lib.accuracy, True),
        "logloss": (metrics_lib.logloss, False),
    },
    "multilabel": {
        "micro_auc": (metrics_lib.micro_auc, True),
        "macro_auc": (metrics_lib.macro_auc, True),
    },
}


def evaluate(task: TaskSpec, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """All metrics of the task's kind over the labelled examples given; NaN for every metric
    when there is no example, or when a prediction is not finite (AUC ranks NaN predictions
    as if they were numbers, so it would look finite and could pick a broken model)."""
    if len(labels) == 0 or not np.all(np.isfinite(predictions)):
        return {name: float("nan") for name in METRICS[task.kind]}
    return {name: fn(labels, predictions) for name, (fn, _) in METRICS[task.kind].items()}


class LabelPriorSums:
    """Sums of a task's train labels (class counts for multiclass) over masked-in rows,
    added chunk by chunk: ``prior()`` is the global rate, mean or class prior."""

    def __init__(self, task: TaskSpec):
        self.task = task
        self.total = np.zeros(task.output_dim if task.kind != "regression" else 1)
        self.count = 0

    def add(self, labels: np.ndarray, masks: np.ndarray) -> None:
        on = np.asarray(masks) > 0
        labels = np.asarray(labels)[on]
        if self.task.kind == "multiclass":
            self.total += np.bincount(labels.astype(np.int64), minlength=self.task.num_classes)
        else:
            self.total += labels.reshape(len(labels), len(self.total)).astype(np.float64).sum(0)
        self.count += int(on.sum())

    def prior(self) -> np.ndarray:
        """(classes,) for multiclass and multilabel, else ()."""
        value = self.total / max(self.count, 1)
        return value if self.task.kind in ("multiclass", "multilabel") else value[0]


def label_prior(task: TaskSpec, train_labels: np.ndarray) -> np.ndarray:
    """The train prior of a task from its labelled rows' labels."""
    sums = LabelPriorSums(task)
    sums.add(train_labels, np.ones(len(train_labels)))
    return sums.prior()


def trivial_predictions(task: TaskSpec, prior: np.ndarray, n: int) -> np.ndarray:
    """The best label-blind predictor fitted on train: the global rate, mean or class prior
    (``label_prior``) for each of ``n`` examples."""
    prior = np.asarray(prior, np.float64)
    return np.tile(prior, (n, 1)) if prior.ndim else np.full(n, float(prior))
