"""Ahead-of-time sizing: lower and compile the train step for a mesh without training, and
report what XLA says one device will hold, so a slice can be sized before it is paid for."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections

from mtl_jax import benchmark, configlib, parallel
from mtl_jax.data import load_dataset
from mtl_jax.trainer import Trainer, with_lm_prompts


def compile_train_step(
    config: ml_collections.ConfigDict, num_devices: int | None = None, model: int | None = None
) -> dict[str, Any]:
    """Compiles the configured train step over ``num_devices`` (default: all), ``model`` of
    them on the mesh's model axis (default: ``config.mesh.model``), from abstract shapes only
    (no parameters are initialised, no batch is read) and returns XLA's per-device memory
    estimate in MiB with the compile time.

    The dataset's schema (vocabulary sizes, tasks, label priors) is still built, since it
    decides the shapes; for simulators that is a few seconds.
    """
    configlib.validate(config)
    dataset = load_dataset(config.data, config.seed, config.get("features"))
    dataset = with_lm_prompts(config, dataset)
    mesh = parallel.make_mesh(num_devices, model=config.mesh.model if model is None else model)
    trainer = Trainer(config, dataset, mesh=mesh)
    batch = next(trainer.train_iterator(num_steps=1))
    processes = jax.process_count()  # the iterator yields this process's rows only
    k = trainer.steps_per_dispatch  # the loop's call: one step, or k over stacked batches
    sharding = parallel.batch_sharding(mesh) if k == 1 else parallel.stacked_batch_sharding(mesh)
    stack = () if k == 1 else (k,)
    abstract_batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            (*stack, x.shape[0] * processes, *x.shape[1:]), x.dtype, sharding=sharding
        ),
        batch,
    )
    step_fn = trainer.train_step if k == 1 else trainer.train_steps
    start = time.perf_counter()
    compiled = step_fn.lower(trainer.abstract_state, abstract_batch).compile()
    compile_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "devices": mesh.size,
        "mesh": dict(mesh.shape),
        "device_kind": jax.devices()[0].device_kind,
        "global_batch": config.train.batch_size,
        "steps_per_dispatch": k,
        "params": int(sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))),
        "compile_s": compile_s,
    }
    report.update(benchmark.memory_mib(compiled) or {})
    return report
