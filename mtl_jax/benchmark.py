"""Measuring a compiled train step: XLA's per-device memory estimate and the median step
time, shared by the ``--compile_only`` report and the benchmarks in ``experiments/``."""

from __future__ import annotations

import collections
import math
import re
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np


def memory_mib(compiled: Any) -> dict[str, float] | None:
    """XLA's per-device estimate for a compiled function, in MiB (None where the backend
    does not say): arguments, outputs, temporaries, the outputs aliased onto donated
    arguments, and the total a device holds while it runs."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    mib = lambda b: b / 2**20
    return dict(
        arguments_mib=mib(memory.argument_size_in_bytes),
        outputs_mib=mib(memory.output_size_in_bytes),
        temporaries_mib=mib(memory.temp_size_in_bytes),
        aliased_mib=mib(memory.alias_size_in_bytes),
        per_device_total_mib=mib(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        ),
    )


def flops_and_bytes(compiled: Any) -> tuple[float, float]:
    """XLA's cost analysis of a compiled function: its FLOPs and bytes accessed (0 where the
    backend does not say)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    analysis = analysis or {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


class CompiledOnce:
    """A jitted function compiled ahead of time at its first call (for those arguments'
    shapes) and run compiled from then on; ``memory`` is XLA's estimate for it, had
    without a second compile."""

    def __init__(self, jitted: Any):
        self._jitted = jitted
        self._compiled: Any = None
        self.memory: dict[str, float] | None = None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None:
            self._compiled = self._jitted.lower(*args).compile()
            self.memory = memory_mib(self._compiled)
        return self._compiled(*args)


def median_seconds(run: Callable[[], Any], repeats: int, calls: int = 1) -> float:
    """Median wall time of one call of ``run``: one warm-up call (which compiles), then
    ``repeats`` timings of ``calls`` consecutive calls each, waiting for JAX's results."""
    return interleaved_median_seconds({"run": run}, repeats, calls)["run"]


def interleaved_median_seconds(
    runs: dict[str, Callable[[], Any]], repeats: int, calls: int = 1
) -> dict[str, float]:
    """``median_seconds`` of several runs, timed in rounds: each round times every run once
    (in an order rotated from round to round), so a slow spell of a shared machine lands on
    all of them alike and their ratios stay meaningful."""
    names = list(runs)
    for name in names:
        jax.block_until_ready(runs[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls):
                out = runs[name]()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


class Matmul(NamedTuple):
    """One dot instruction of an optimized HLO module: operand shapes, dimension numbers."""

    dtype: str
    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    contracting: tuple[tuple[int, ...], tuple[int, ...]]
    batch: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def flops(self) -> int:
        free_lhs = [
            d for i, d in enumerate(self.lhs) if i not in self.contracting[0] + self.batch[0]
        ]
        free_rhs = [
            d for i, d in enumerate(self.rhs) if i not in self.contracting[1] + self.batch[1]
        ]
        k = math.prod(self.lhs[i] for i in self.contracting[0])
        b = math.prod(self.lhs[i] for i in self.batch[0])
        return 2 * b * k * math.prod(free_lhs) * math.prod(free_rhs)


_HLO_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}
_DEFINITION = re.compile(r"%(\S+) = (\w+)\[([0-9,]*)\]")
_DOT = re.compile(r"= (\w+)\[[0-9,]*\]\S* dot\(%(\S+), %(\S+)\)(.*)")


def _dims(attributes: str, key: str) -> tuple[int, ...]:
    match = re.search(key + r"=\{([0-9,]*)\}", attributes)
    return tuple(int(x) for x in match.group(1).split(",") if x) if match else ()


def matmuls(hlo_text: str) -> collections.Counter:
    """The dot instructions of an optimized HLO module's text (``compiled.as_text()``),
    fused ones included, counted by shape and dimension numbers: what a step's matmuls are
    once XLA has laid them out."""
    shapes = {
        m.group(1): tuple(int(x) for x in m.group(3).split(",") if x)
        for m in _DEFINITION.finditer(hlo_text)
    }
    found: collections.Counter = collections.Counter()
    for line in hlo_text.splitlines():
        m = _DOT.search(line)
        if m and m.group(1) in _HLO_DTYPES:  # floating-point matmuls
            attrs = m.group(4)
            found[
                Matmul(
                    _HLO_DTYPES[m.group(1)],
                    shapes[m.group(2)],
                    shapes[m.group(3)],
                    (_dims(attrs, "lhs_contracting_dims"), _dims(attrs, "rhs_contracting_dims")),
                    (_dims(attrs, "lhs_batch_dims"), _dims(attrs, "rhs_batch_dims")),
                )
            ] += 1
    return found


def time_matmuls_alone(found: collections.Counter, repeats: int, calls: int) -> list[dict]:
    """Each matmul of ``matmuls`` timed alone (its own jitted ``dot_general`` on random
    operands, the machine's every core free for it): per shape its count, FLOPs and median
    seconds. Their sum bounds a step from below as far as its matmuls go: the step cannot
    beat it unless the matmuls overlap each other."""
    rows = []
    rng = np.random.default_rng(0)
    for mm, count in found.most_common():
        lhs = jax.numpy.asarray(rng.random(mm.lhs), mm.dtype)
        rhs = jax.numpy.asarray(rng.random(mm.rhs), mm.dtype)
        dims = (mm.contracting, mm.batch)
        dot = jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, dims))
        seconds = median_seconds(lambda dot=dot, a=lhs, b=rhs: dot(a, b), repeats, calls)
        rows.append({"matmul": mm, "count": count, "flops": mm.flops, "seconds": seconds})
    return rows


def compile_train_step(train_step: Any, state: Any, batch: Any) -> dict[str, Any]:
    """Compiles ``train_step`` for ``(state, batch)``: the compiled step, the compile time,
    XLA's memory estimate, and ``run``, a closure stepping a private copy of ``state`` on the
    same on-device batch (what the timers call)."""
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    carry = [state]

    def run():
        carry[0], metrics = compiled(carry[0], batch)
        return metrics

    return {
        "compiled": compiled,
        "compile_s": compile_s,
        "memory": memory_mib(compiled),
        "run": run,
    }


def record_header(name: str, config: Any, batch_size: int) -> dict:
    """The fields every benchmark line starts with: what ran, where, at which commit."""
    from mtl_jax import reporting

    return {
        "benchmark": name,
        "config": config.data.name,
        "trunk": config.model.trunk,
        "batch_size": batch_size,
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "commit": reporting.git_commit(),
    }


def measure_trainer_step(config: Any, dataset: Any, mesh: Any, steps: int, repeats: int) -> dict:
    """A fresh ``Trainer`` of ``config`` on ``mesh``: its jitted train step timed on one
    batch already on device (``time_train_step``), for the benchmarks' sweeps. Returns the
    mesh shape, step ms, examples/s, compile seconds, XLA's memory estimate (a dict, empty
    where the backend gives none) and the parameter count."""
    from mtl_jax import parallel
    from mtl_jax.trainer import Trainer  # the trainer imports this module

    trainer = Trainer(config, dataset, mesh=mesh)
    state = trainer.init_state()
    batch = parallel.to_global_batch(next(trainer.train_iterator()), trainer.mesh)
    timing = time_train_step(trainer.train_step, state, batch, steps, repeats)
    return {
        "mesh": dict(trainer.mesh.shape),
        "step_ms": timing["step_ms"],
        "examples_per_s": config.train.batch_size / (timing["step_ms"] / 1e3),
        "compile_s": timing["compile_s"],
        "memory": timing["memory"] or {},
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    }


def time_train_step(
    train_step: Any, state: Any, batch: Any, steps: int, repeats: int
) -> dict[str, Any]:
    """Compiles ``train_step`` for ``(state, batch)``, runs it once, then times ``repeats``
    runs of ``steps`` steps on the same on-device batch (input time excluded); returns the
    median seconds per step in ms, the compile time, the memory estimate and the compiled
    step itself (for its cost analysis)."""
    compiled = compile_train_step(train_step, state, batch)
    step_ms = 1e3 * median_seconds(compiled.pop("run"), repeats, steps)
    return {"step_ms": step_ms, **compiled}
