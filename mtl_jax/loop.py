"""The training loop: validation, best tracking, early stopping, checkpoints and signals.

``train_and_evaluate(config, workdir)`` builds the data and the trainer, resumes from the
workdir's latest checkpoint if there is one, trains with periodic validation and early
stopping, and reports test metrics of the best-on-validation parameters. The guards
(mtl_jax/guards.py) sit here: a step that is not finite is never applied, a diverging run
stops, and nothing non-finite is ever saved.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mtl_jax import configlib, parallel, reporting
from mtl_jax import stages as stages_lib
from mtl_jax.checkpoint import Checkpointer, IncompatibleCheckpointError
from mtl_jax.configlib import ConfigError
from mtl_jax.evaluation import (
    final_results,
    format_diagnostics,
    format_task_metrics,
    gradient_diagnostics,
)
from mtl_jax.guards import NonFiniteLossError, StepGuard, TrainingDivergedError
from mtl_jax.models import gate_stats
from mtl_jax.preemption import PreemptionWatch
from mtl_jax.trainer import Trainer, load_run_dataset
from mtl_jax.workdir import WorkdirLock

log = logging.getLogger("mtl_jax")

__all__ = [
    "NonFiniteLossError",
    "TrainingDivergedError",
    "is_better",
    "raise_if_diverged",
    "track_best",
    "train_and_evaluate",
]


def track_best(meta: dict[str, Any], value: float, step: int, higher_is_better: bool) -> bool:
    """Records a validation value in a run's ``meta`` (best_value, best_step,
    evals_without_improvement); True if it is the new best."""
    if is_better(value, meta["best_value"], higher_is_better):
        meta.update(best_value=value, best_step=step, evals_without_improvement=0)
        return True
    meta["evals_without_improvement"] += 1
    return False


def is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    """A non-finite value (e.g. the metric of non-finite predictions) is never better."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


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
    boundary and returns None, so the process can exit 0 and a rerun resumes exactly. A
    second process on the same workdir gets ``WorkdirBusyError`` (mtl_jax/workdir.py).
    """
    configlib.validate(config)
    with WorkdirLock(workdir), PreemptionWatch() as preemption:
        return TrainingLoop(config, workdir, max_steps_this_run, preemption).run()


class TrainingLoop:
    """One call of ``train_and_evaluate``: resume or start, train, validate, save, report."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | pathlib.Path,
        max_steps_this_run: int | None,
        preemption: PreemptionWatch,
    ):
        self.start_time = time.perf_counter()  # the config was validated by the caller
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dict = configlib.to_dict(config)
        self.max_steps_this_run = max_steps_this_run
        self.preemption = preemption
        self.ckpt: Checkpointer | None = None
        self.metrics_log = reporting.MetricsLog(
            self.workdir / "metrics.jsonl",
            self.workdir / "tensorboard" if config.train.tensorboard else None,
        )
        self._trainers: dict[int, Trainer] = {}

    def run(self) -> dict[str, Any] | None:
        try:
            return self._run()
        finally:
            self.metrics_log.close()
            if self.ckpt is not None:
                self.ckpt.close()

    def _run(self) -> dict[str, Any] | None:
        t, c = self.config.train, self.config.checkpoint
        latest = None
        if (self.workdir / "checkpoints").is_dir():
            self.ckpt = Checkpointer(self.workdir, c.max_to_keep, c.async_save)
            latest = self.ckpt.latest_step()
        if latest is not None:  # fail fast on a config mismatch, before building anything
            try:
                self.ckpt.check_compatible(latest, self.config_dict)
            except IncompatibleCheckpointError:
                raise
            except Exception:  # noqa: BLE001 - unreadable: restore_newest below deals with it
                pass
        self.dataset = load_run_dataset(self.config)
        configlib.validate_against_dataset(self.config, self.dataset)
        if self.ckpt is None:  # only now: a config error leaves nothing in the workdir
            self.ckpt = Checkpointer(self.workdir, c.max_to_keep, c.async_save)
        self.plan = stages_lib.plan(self.config)
        self.trainer = self._trainer_at(latest or 0)
        self._log_setup()
        self._resume_or_start(latest)
        self.guard = StepGuard(
            self.config.guards,
            self._describe_last_good,
            self.trainer.train_task_names,
            history=self.meta.get("guard", {}),
        )
        task_name, _, metric_name = t.early_stopping_metric.partition("/")
        self.early_stopping = (task_name, metric_name)
        self.higher_is_better = {tk.name: tk for tk in self.trainer.tasks}[
            task_name
        ].higher_is_better[metric_name]
        self.step = self.start_step = int(self.meta["step"])
        self.throughput = reporting.Throughput(self.step, t.num_steps, t.batch_size)
        if not self.meta["finished"]:
            reporting.note_training_commit(self.meta)
            log.info("training from step %d to %d", self.step, t.num_steps)
            if len(self.plan) > 1:
                stage = self.trainer.stage
                log.info("stage %s (steps %d-%d)", stage.name, stage.start, stage.end)
        while not self.meta["finished"]:
            if self._train_one_step():
                return None
        self.ckpt.wait()
        return self._report()

    # -- setup ---------------------------------------------------------------------------

    def _trainer_at(self, step: int) -> Trainer:
        """The trainer of the stage a checkpoint at ``step`` belongs to (built once)."""
        index = stages_lib.index_at(self.plan, step)
        if index not in self._trainers:
            self._trainers[index] = Trainer(self.config, self.dataset, stage=index)
        return self._trainers[index]

    def _log_setup(self) -> None:
        trainer = self.trainer
        log.info(
            "dataset sizes %s; mesh %s; %d tasks %s",
            self.dataset.sizes(),
            dict(trainer.mesh.shape),
            len(trainer.tasks),
            [task.name for task in trainer.tasks],
        )
        if trainer.mesh.size > 1:
            sharded = parallel.sharded_params(trainer.state_sharding.params)
            log.info(
                "parameters split over the mesh: %s", "; ".join(sharded) or "none (replicated)"
            )

    def _resume_or_start(self, latest: int | None) -> None:
        restored = (
            self.ckpt.restore_newest(
                lambda s: self._trainer_at(s).abstract_state,
                lambda s: self._trainer_at(s).train_iterator(),
                self.config_dict,
            )
            if latest is not None
            else None
        )
        if restored is not None:
            latest, self.state, self.meta, self.data_iter = restored
            self.trainer = self._trainer_at(latest)
            self.metrics_log.truncate_after(latest)
            log.info("resumed from step %d in %s", latest, self.workdir)
        else:
            if latest is not None:
                log.warning(
                    "no checkpoint in %s restored intact: starting from step 0", self.workdir
                )
            latest = 0
            self.trainer = self._trainer_at(0)
            self.data_iter = self.trainer.train_iterator()
            self.state = self.trainer.init_state()
            self.meta = {
                "step": 0,
                "best_value": None,
                "best_step": None,
                "evals_without_improvement": 0,
                "finished": False,
                "config": self.config_dict,
            }
            if reporting.is_lead_process():
                reporting.write_json(self.workdir / "config.json", self.config_dict)
                self.metrics_log.reset()
                if self.dataset.encoding is not None:  # file datasets: the fitted encoders
                    self.dataset.encoding.save(self.workdir / "features")
        # Best checkpoints newer than where this run stands were written by a run that did
        # not get to checkpoint them (killed, diverged): they are not this run's.
        self.ckpt.discard_best_after(self.meta["best_step"] or 0)

    def _describe_last_good(self) -> str:
        self.ckpt.wait()
        latest = self.ckpt.latest_step()
        if latest is None:
            return f"No checkpoint was written; {self.ckpt.directory} holds nothing to resume."
        return f"The last good checkpoint (step {latest}) is intact in {self.ckpt.directory}."

    # -- one step ------------------------------------------------------------------------

    def _dispatch_size(self) -> int:
        """How many steps the next call runs: ``train.steps_per_dispatch`` when that many
        fit before the next log, validation, stage change, end of the step budget or of
        the run, else one (so the loop lands on each of those steps whatever K is)."""
        k = self.trainer.steps_per_dispatch
        if k == 1:
            return 1
        t, step = self.config.train, self.step
        next_stop = min(
            t.num_steps,
            self.trainer.stage.end,
            (step // t.log_every + 1) * t.log_every,
            (step // t.eval_every + 1) * t.eval_every,
        )
        if self.max_steps_this_run is not None:
            next_stop = min(next_stop, self.start_step + self.max_steps_this_run)
        return k if next_stop - step >= k else 1

    def _train_one_step(self) -> bool:
        """Trains one dispatch (one step, or ``train.steps_per_dispatch`` steps in one call)
        with what follows it (log, stage change, validation, save); True when this call
        must stop here (step budget spent or preempted)."""
        t = self.config.train
        k = self._dispatch_size()
        mesh = self.trainer.mesh
        if k == 1:
            batch = parallel.to_global_batch(next(self.data_iter), mesh)
            self.state, train_metrics = self.trainer.compiled_single_step(self.state, batch)
            self.step += 1
            self.guard.watch(self.step, train_metrics)
        else:
            batches = parallel.to_global_batches([next(self.data_iter) for _ in range(k)], mesh)
            self.state, train_metrics = self.trainer.compiled_train_step(self.state, batches)
            self.step += k
            self.guard.watch_many(self.step, train_metrics)
        step = self.step
        last = step >= t.num_steps
        if step % t.log_every == 0 or last:
            if k > 1:  # logging reads the dispatch's last step, sliced at log steps only
                train_metrics, batch = jax.tree.map(lambda x: x[-1], (train_metrics, batches))
            self._log_train(train_metrics, batch, last)
        if not last and step == self.trainer.stage.end:
            self._next_stage()
        if step % t.eval_every == 0 or last:
            self._validate(last)
            self.throughput.restart(step)
        budget_spent = (
            self.max_steps_this_run is not None
            and step - self.start_step >= self.max_steps_this_run
        )
        preempted = self.preemption.reached(step)
        if (budget_spent or preempted) and not self.meta["finished"]:
            if self.ckpt.latest_step() != step:
                self._save({**self.meta, "step": step})
            self.ckpt.wait()
            log.info(
                "%s after %d steps this run; rerun to resume at step %d",
                "preempted: checkpointed and stopping" if preempted else "stopping",
                step - self.start_step,
                step,
            )
            return True
        return False

    def _log_train(self, train_metrics: dict, batch: dict, last: bool) -> None:
        self.guard.flush()
        trainer, step, t = self.trainer, self.step, self.config.train
        names = trainer.train_task_names
        host = jax.device_get(train_metrics)
        gram = host.get("gram")
        if gram is None:  # loss-weighting methods: one extra backward, on log steps only
            gram = jax.device_get(trainer.trunk_gramian(self.state.params, batch))
        diagnostics = gradient_diagnostics(gram, host["weights"], names)
        gates = (
            gate_stats.summarize(jax.device_get(trainer.gate_stats(self.state.params, batch)))
            if trainer.gate_stats is not None
            else {}
        )
        speed = self.throughput.mark(step)
        record = {
            "step": step,
            "split": "train",
            "loss": host["loss"],
            "grad_norm": host["grad_norm"],
            "skipped_steps": self.guard.skipped_steps,
            **{f"{n}/loss": v for n, v in zip(names, host["task_losses"], strict=True)},
            **diagnostics,
            **gates,
            **{f"lr/{g}": v for g, v in trainer.learning_rates(step).items()},
            **speed,
        }
        self.metrics_log.write(record)
        speed_text = (
            f" | {speed['steps_per_s']:.1f} steps/s {speed['examples_per_s']:,.0f} ex/s "
            f"ETA {reporting.format_eta(speed['eta_s'])}"
            if speed
            else ""
        )
        skipped = (
            f" | {self.guard.skipped_steps} non-finite steps skipped"
            if self.guard.skipped_steps
            else ""
        )
        log.info("step %d/%d | loss %.4f%s%s", step, t.num_steps, host["loss"], speed_text, skipped)
        if step % (t.log_every * 10) == 0 or last:
            log.info("  %s", format_diagnostics(diagnostics, names))
            if gates:
                log.info("  gates %s", " ".join(f"{k[6:]}={v:.3f}" for k, v in gates.items()))

    def _next_stage(self) -> None:
        """Moves to the next stage's trainer: its optimizer, tasks and frozen groups."""
        self.guard.flush()
        self.trainer = self._trainer_at(self.step)
        self.state = self.trainer.begin_stage(self.state)
        self.guard.task_names = self.trainer.train_task_names
        stage = self.trainer.stage
        log.info(
            "stage %s (steps %d-%d): tasks %s, frozen %s, shared lr x%g",
            stage.name, stage.start, stage.end, list(self.trainer.train_task_names),
            sorted(stage.frozen) or "none", stage.shared_lr_scale,
        )  # fmt: skip

    def _validate(self, last: bool) -> None:
        """Validation; the best parameters go to ``best/``, a checkpoint when it is time."""
        self.guard.flush()
        step, t, meta = self.step, self.config.train, self.meta
        task_name, metric_name = self.early_stopping
        self.state = self.trainer.settle(self.state)  # what is evaluated and saved
        val = self.trainer.evaluate(self.state.params, self.dataset.validation)
        value = val[task_name][metric_name]
        if not math.isfinite(value):
            log.warning(
                "validation %s is %s at step %d (predictions not finite, or no labelled "
                "example of both kinds): not a candidate for best",
                t.early_stopping_metric, value, step,
            )  # fmt: skip
        improved = track_best(meta, value, step, self.higher_is_better)
        if improved:
            self._check_params_finite("the best checkpoint")
            self.ckpt.save_best(step, self.state.params)
        in_last_stage = self.trainer.stage_index == len(self.plan) - 1
        stop = in_last_stage and meta["evals_without_improvement"] >= t.patience
        meta.update(step=step, finished=last or stop, stage=self.trainer.stage.name)
        self.metrics_log.write({"step": step, "split": "validation", "metrics": val})
        log.info(
            "validation step %d: %s%s",
            step,
            format_task_metrics(val),
            " (best)" if improved else "",
        )
        if step % t.checkpoint_every == 0 or meta["finished"]:
            self._save(meta)
        if stop and not last:
            log.info(
                "early stopping at step %d: %s has not improved for %d evaluations "
                "(best %.4f at step %d)",
                step, t.early_stopping_metric, t.patience, meta["best_value"], meta["best_step"],
            )  # fmt: skip

    def _save(self, meta: dict[str, Any]) -> None:
        """Saves the state after the guard has judged every step up to this one and the
        parameters are finite; the guard's history travels in ``meta``."""
        self.guard.flush()
        self._check_params_finite("a checkpoint")
        self.ckpt.save(
            self.step, self.state, self.data_iter, {**meta, "guard": self.guard.history()}
        )

    def _check_params_finite(self, what: str) -> None:
        if not bool(jax.device_get(self.trainer.params_finite(self.state.params))):
            raise NonFiniteLossError(
                f"the parameters are not finite at step {self.step}; {what} was not saved. "
                f"{self._describe_last_good()} Lower optim.learning_rate or check the data."
            )

    # -- the end -------------------------------------------------------------------------

    def _report(self) -> dict[str, Any]:
        meta = self.meta
        if meta["best_step"] is None:
            metric = self.config.train.early_stopping_metric
            raise ConfigError(
                f"no validation step gave a finite {metric} (a validation split without "
                "labelled examples of both classes, or predictions that were never finite), "
                "so there is no best checkpoint to test; choose a train.early_stopping_metric "
                "the validation split defines (e.g. a logloss) or a larger validation split"
            )
        best_params = self.ckpt.restore_best(
            self.trainer.abstract_state.params, step=meta["best_step"]
        )
        measured = {
            "train_examples_per_s": self.throughput.examples_per_s,
            "median_step_ms": self.throughput.median_step_ms,
            "wall_time_s": time.perf_counter() - self.start_time,
            "train_step_memory": self.trainer.compiled_train_step.memory,
            "skipped_steps": self.guard.skipped_steps,
        }
        saved = self.workdir / "results.json"
        if self.step == self.start_step and saved.is_file():
            # A re-report of a finished run: its training measurements are the ones the
            # run that trained it took, not this process's (which trained nothing).
            before = json.loads(saved.read_text())
            measured.update({k: before[k] for k in measured if k in before})
        results = final_results(self.trainer, self.dataset, best_params, meta, measured)
        if reporting.is_lead_process():
            reporting.write_json(self.workdir / "results.json", results)
        return results


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
