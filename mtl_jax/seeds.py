"""Several seeds of one configured run, trained together in one jitted step.

The train step is ``jax.vmap``-ed over a leading seed axis of the whole train state
(parameters, optimizer and combiner states, random keys) and of the batch (each seed keeps
its own data order), so S small models share one dispatch per step instead of S: on a CPU
or an accelerator that small models leave idle, S seeds cost far less than S runs.

Each seed ends as ``train_and_evaluate`` with ``config.seed = s`` would: the same selection
on validation, early stopping and ``results.json`` in ``<workdir>/seed_<s>/`` (equal up to
float reassociation in the batched kernels; tests/test_seeds.py checks it). The stacked
state is checkpointed in ``<workdir>/stacked/`` with the stacked data iterator, so a killed
run resumes exactly. Seeds that stop early ride along until the last one stops.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from mtl_jax import benchmark, configlib, parallel, reporting
from mtl_jax import stages as stages_lib
from mtl_jax.checkpoint import Checkpointer
from mtl_jax.configlib import ConfigError
from mtl_jax.data import Split, drawn_from_seed
from mtl_jax.data.pipeline import train_iterator
from mtl_jax.evaluation import final_results, gradient_diagnostics, task_metrics
from mtl_jax.loop import raise_if_diverged, track_best
from mtl_jax.preemption import PreemptionWatch
from mtl_jax.step import make_eval_step, make_train_step, make_trunk_gramian, settling
from mtl_jax.trainer import Trainer, load_run_dataset
from mtl_jax.workdir import WorkdirLock

log = logging.getLogger("mtl_jax")


def check_parallel_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int]) -> None:
    """Raises ``ConfigError`` where S seeds cannot share one vmapped step."""
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"parallel seeds must be distinct and at least one, got {list(seeds)}")
    if config.data_seed < 0 and (drawn_from_seed(config.data) or config.cv.folds):
        raise ConfigError(
            f"dataset {config.data.name!r} is drawn from the seed, so its seeds cannot share "
            "one batch axis; set --config.data_seed=N to train every seed on one draw, or "
            "train the seeds separately"
        )
    if len(stages_lib.plan(config)) > 1:
        raise ConfigError("staged training (config.stages) runs its seeds separately")
    if config.distill.teacher_workdir:
        raise ConfigError("distillation (config.distill.teacher_workdir) runs its seeds separately")


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """``config`` with ``seed`` set (and the dataset's seed kept, see config.data_seed)."""
    out = config.copy_and_resolve_references()
    out.seed = seed
    return out


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)


def _unstack(tree: Any, index: int) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


def train_seeds(
    config: ml_collections.ConfigDict,
    seeds: Sequence[int],
    workdir: str | pathlib.Path,
    *,
    max_steps_this_run: int | None = None,
) -> list[dict[str, Any]] | None:
    """Trains ``seeds`` of ``config`` together; returns each seed's results dict (None when
    stopped early by ``max_steps_this_run`` or SIGTERM: rerun to resume)."""
    with WorkdirLock(workdir), PreemptionWatch() as preemption:
        return _train_seeds(
            config, list(seeds), pathlib.Path(workdir), max_steps_this_run, preemption
        )


def _train_seeds(
    config: ml_collections.ConfigDict,
    seeds: list[int],
    workdir: pathlib.Path,
    max_steps_this_run: int | None,
    preemption: PreemptionWatch,
) -> list[dict[str, Any]] | None:
    start_time = time.perf_counter()
    configlib.validate(config)
    check_parallel_seeds(config, seeds)
    seed_dirs = [workdir / f"seed_{s}" for s in seeds]
    if all((d / "results.json").exists() for d in seed_dirs):
        return [json.loads((d / "results.json").read_text()) for d in seed_dirs]
    t = config.train
    if t.steps_per_dispatch > 1:
        log.info("seeds train one vmapped step per call (train.steps_per_dispatch is for runs)")
    configs = [seed_config(config, s) for s in seeds]
    config_key = {**configlib.to_dict(config), "parallel_seeds": seeds}

    dataset = load_run_dataset(config)
    mesh = parallel.make_mesh(1)
    trainers = [Trainer(c, dataset, mesh=mesh) for c in configs]
    lead = trainers[0]
    names = lead.train_task_names
    step_fn = make_train_step(
        lead.model,
        lead.train_tasks,
        lead.tx,
        lead.rule,
        config.balancing.gramian_params,
        config.regularization.embedding_norm,
        task_gradients=config.balancing.task_gradients,
        gramian_at=config.balancing.gramian_at,
        sparse_embeddings=config.optim.sparse_embedding_updates,
        settle=lead.lazy_l2_settle,
    )
    vstep = benchmark.CompiledOnce(jax.jit(jax.vmap(step_fn), donate_argnums=(0,)))
    vsettle = None
    if lead.lazy_l2_settle is not None:  # pending lazy L2 pulls, before evaluation and saves
        vsettle = jax.jit(jax.vmap(settling(lead.lazy_l2_settle)), donate_argnums=(0,))
    veval = jax.jit(jax.vmap(make_eval_step(lead.model, lead.tasks), in_axes=(0, None)))
    vgram = jax.jit(
        jax.vmap(make_trunk_gramian(lead.model, lead.train_tasks, config.balancing.task_gradients))
    )
    whole = parallel.replicated(mesh)

    ckpt = Checkpointer(
        workdir / "stacked", config.checkpoint.max_to_keep, config.checkpoint.async_save
    )
    bests = [Checkpointer(d, 1, config.checkpoint.async_save) for d in seed_dirs]
    logs = [
        reporting.MetricsLog(d / "metrics.jsonl", d / "tensorboard" if t.tensorboard else None)
        for d in seed_dirs
    ]

    def make_iterator(_step=None):
        return train_iterator(
            dataset.train,
            batch_size=t.batch_size,
            num_steps=t.num_steps,
            seed=seeds,
            window_blocks=config.data.get("window_blocks", 64),
            transform=lead.negatives.train_batch if lead.negatives else None,
        )

    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((len(seeds), *a.shape), a.dtype, sharding=whole),
        lead.abstract_state,
    )
    restored = (
        ckpt.restore_newest(abstract, make_iterator, config_key)
        if ckpt.latest_step() is not None
        else None
    )
    if restored is not None:
        step, state, meta, data_iter = restored
        for best, seed_meta in zip(bests, meta["seeds"], strict=True):
            best.discard_best_after(seed_meta["best_step"] or 0)
        for metrics_log in logs:
            metrics_log.truncate_after(step)
        log.info("resumed %d seeds from step %d in %s", len(seeds), step, workdir)
    else:
        data_iter = make_iterator()
        for best in bests:
            best.discard_best_after(0)  # left by an attempt that never checkpointed
        state = jax.device_put(_stack([tr.init_state() for tr in trainers]), whole)
        fresh = dict(best_value=None, best_step=None, evals_without_improvement=0, finished=False)
        meta = {
            "step": 0,
            "finished": False,
            "config": config_key,
            "seeds": [dict(fresh, step=0) for _ in seeds],
        }
        for c, d, metrics_log in zip(configs, seed_dirs, logs, strict=True):
            d.mkdir(parents=True, exist_ok=True)
            reporting.write_json(d / "config.json", configlib.to_dict(c))
            metrics_log.reset()

    task_name, _, metric_name = t.early_stopping_metric.partition("/")
    higher = {tk.name: tk for tk in lead.tasks}[task_name].higher_is_better[metric_name]
    step = start_step = int(meta["step"])
    throughput = reporting.Throughput(step, t.num_steps, t.batch_size * len(seeds))
    log.info("training seeds %s together from step %d to %d", seeds, step, t.num_steps)
    if not meta["finished"]:
        reporting.note_training_commit(meta)
    while not meta["finished"]:
        batch = jax.device_put(next(data_iter), whole)
        state, train_metrics = vstep(state, batch)
        step += 1
        last = step >= t.num_steps
        active = [i for i, m in enumerate(meta["seeds"]) if not m["finished"]]
        if step % t.log_every == 0 or last:
            host = _fetch_finite(train_metrics, step, seeds, active, names, ckpt)
            gram = host.get("gram")
            if gram is None:
                gram = jax.device_get(vgram(state.params, batch))
            speed = throughput.mark(step)
            for i in active:
                record = {
                    "step": step,
                    "split": "train",
                    "loss": host["loss"][i],
                    "grad_norm": host["grad_norm"][i],
                    **{f"{n}/loss": v for n, v in zip(names, host["task_losses"][i], strict=True)},
                    **gradient_diagnostics(gram[i], host["weights"][i], names),
                    **speed,
                }
                logs[i].write(record)
            losses = " ".join(f"{seeds[i]}:{host['loss'][i]:.4f}" for i in active)
            rate = f" | {speed['steps_per_s']:.1f} steps/s" if speed else ""
            log.info("step %d/%d | loss by seed %s%s", step, t.num_steps, losses, rate)
        if step % t.eval_every == 0 or last:
            if vsettle is not None:
                state = vsettle(state)
            validation = _evaluate_stacked(veval, lead, state.params, dataset.validation)
            for i in active:
                m, val = meta["seeds"][i], validation[i]
                value = val[task_name][metric_name]
                if track_best(m, value, step, higher):
                    bests[i].save_best(step, _unstack(state.params, i))
                stop = m["evals_without_improvement"] >= t.patience
                m.update(step=step, finished=last or stop)
                logs[i].write({"step": step, "split": "validation", "metrics": val})
            meta.update(step=step, finished=all(m["finished"] for m in meta["seeds"]))
            best = " ".join(
                f"{seeds[i]}:{validation[i][task_name][metric_name]:.4f}" for i in active
            )
            log.info("validation step %d: %s by seed %s", step, t.early_stopping_metric, best)
            if step % t.checkpoint_every == 0 or meta["finished"]:
                ckpt.save(step, state, data_iter, meta)
            throughput.restart(step)
        budget_spent = max_steps_this_run is not None and step - start_step >= max_steps_this_run
        if (budget_spent or preemption.reached(step)) and not meta["finished"]:
            if ckpt.latest_step() != step:
                _fetch_finite(train_metrics, step, seeds, active, names, ckpt)
                ckpt.save(step, state, data_iter, {**meta, "step": step})
            for c in (ckpt, *bests):
                c.wait()
                c.close()
            for metrics_log in logs:
                metrics_log.close()
            log.info("stopping at step %d; rerun to resume", step)
            return None
    for c in (ckpt, *bests):
        c.wait()
    for metrics_log in logs:
        metrics_log.close()

    measured = {
        "train_examples_per_s": throughput.examples_per_s,  # of all the seeds together
        "median_step_ms": throughput.median_step_ms,  # one step of all the seeds
        "wall_time_s": time.perf_counter() - start_time,
        "train_step_memory": vstep.memory,  # None when resumed after the last step
        "parallel_seeds": len(seeds),
    }
    results = []
    for i, (trainer, d) in enumerate(zip(trainers, seed_dirs, strict=True)):
        best_params = bests[i].restore_best(
            trainer.abstract_state.params, step=meta["seeds"][i]["best_step"]
        )
        log.info("seed %d:", seeds[i])
        seed_meta = {**meta["seeds"][i], "trained_commits": meta.get("trained_commits", [])}
        out = final_results(trainer, dataset, best_params, seed_meta, measured)
        reporting.write_json(d / "results.json", out)
        results.append(out)
    for c in (ckpt, *bests):
        c.close()
    return results


def _evaluate_stacked(
    veval: Any, trainer: Trainer, params: Any, split: Split
) -> list[dict[str, dict[str, float]]]:
    """Every seed's ``{task: {metric: value}}`` on ``split``, from one vmapped pass."""
    split = trainer.evaluation_split(split)
    predictions, losses = trainer.predict(params, split, veval, batch_axis=1)
    return [
        task_metrics(trainer.tasks, split, {k: v[i] for k, v in predictions.items()}, losses[i])
        for i in range(losses.shape[0])
    ]


def _fetch_finite(
    train_metrics: dict,
    step: int,
    seeds: Sequence[int],
    active: Sequence[int],
    names: Sequence[str],
    ckpt: Checkpointer,
) -> dict:
    """Host copy of a step's metrics; raises if a still-training seed's loss diverged."""
    host = jax.device_get(train_metrics)
    for i in active:
        loss, task_losses = host["loss"][i], host["task_losses"][i]
        raise_if_diverged(loss, task_losses, step, names, ckpt, who=f"seed {seeds[i]}: ")
    return host
