"""Training's public entry points, gathered from the modules that each do one job.

- ``mtl_jax.step``: the pure train and eval steps (losses, per-task gradients, Gramian path);
- ``mtl_jax.trainer``: ``Trainer``, the model, optimizer, shardings and compiled steps of a run;
- ``mtl_jax.loop``: ``train_and_evaluate``, the loop (validation, best tracking, early
  stopping, checkpoints, signals, guards);
- ``mtl_jax.evaluation``: metrics per task, calibration and the final results.
"""

from mtl_jax.evaluation import calibration, final_results, task_metrics
from mtl_jax.loop import NonFiniteLossError, train_and_evaluate
from mtl_jax.step import (
    TrainState,
    embedding_norm_penalty,
    make_eval_step,
    make_train_step,
    task_loss_sums,
)
from mtl_jax.trainer import Trainer, load_run_dataset

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "Trainer",
    "calibration",
    "embedding_norm_penalty",
    "final_results",
    "load_run_dataset",
    "make_eval_step",
    "make_train_step",
    "task_loss_sums",
    "task_metrics",
    "train_and_evaluate",
]
