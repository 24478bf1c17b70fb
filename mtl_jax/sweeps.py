"""Sweeps: named grids of config overrides, and running their cells resumably.

A sweep is a function that yields override dicts (dotted config keys to values), written
either as ``sweep(name)`` in a config file (returning None for names it does not know) or
as ``sweep(config)`` in ``experiments/sweeps/<name>.py``. A dict may carry ``"name"`` (the
cell's directory name; otherwise the values joined by ``-``). An optional ``common(config)``
in a sweep file gives overrides applied to every cell (e.g. a cheaper evaluation).

Each cell trains its seeds in ``<workdir>/<cell>/seed_<s>/``; a finished seed (its
``results.json`` exists) is skipped, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import itertools
import logging
import multiprocessing
import pathlib
import re
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections

from mtl_jax import configlib, reporting
from mtl_jax.configlib import ConfigError
from mtl_jax.workdir import WorkdirLock

log = logging.getLogger("mtl_jax")

SWEEP_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "sweeps"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of a sweep: its directory name and its config overrides."""

    name: str
    overrides: dict[str, Any]


def _load_module(path: pathlib.Path, label: str) -> Any:
    spec = importlib.util.spec_from_file_location(label, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def available_sweeps(sweep_dir: pathlib.Path = SWEEP_DIR) -> list[str]:
    return sorted(p.stem for p in sweep_dir.glob("*.py") if not p.stem.startswith("_"))


def load_sweep(
    name: str,
    config: ml_collections.ConfigDict,
    config_file: str = "",
    sweep_dir: pathlib.Path = SWEEP_DIR,
) -> list[Cell]:
    """The cells of sweep ``name``: from ``config_file``'s ``sweep(name)`` if it has one that
    knows the name, else ``experiments/sweeps/<name>.py`` (or a path to a ``.py`` file)."""
    dicts: Iterable[dict] | None = None
    common: dict[str, Any] = {}
    path = config_file.partition(":")[0]
    if path:
        module = _load_module(pathlib.Path(path), "_mtl_jax_sweep_config")
        if hasattr(module, "sweep"):
            dicts = module.sweep(name)
    if dicts is None:
        file = pathlib.Path(name) if name.endswith(".py") else sweep_dir / f"{name}.py"
        if not file.is_file():
            raise ConfigError(
                f"unknown sweep {name!r}: no sweep({name!r}) in {path or 'the config'} and no "
                f"{file}; sweeps in {sweep_dir}: {available_sweeps(sweep_dir)}"
            )
        module = _load_module(file, f"_mtl_jax_sweep_{file.stem}")
        dicts = module.sweep(config)
        common = dict(module.common(config)) if hasattr(module, "common") else {}
    cells = []
    for overrides in dicts:
        overrides = dict(overrides)
        cell_name = overrides.pop("name", None) or "-".join(str(v) for v in overrides.values())
        cells.append(Cell(_safe_name(cell_name), {**common, **overrides}))
    if not cells:
        raise ConfigError(f"sweep {name!r} has no cells")
    names = [c.name for c in cells]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"sweep {name!r} names several cells {duplicated}; give them 'name's")
    for cell in cells:  # every cell's overrides must apply before anything trains
        apply_overrides(config, cell.overrides)
    return cells


def grid(axes: dict[str, Sequence[Any]]) -> Iterable[dict[str, Any]]:
    """Override dicts of the cross product of ``axes`` (dotted key -> values), the last
    key varying fastest: ``grid({"model.trunk": ("mmoe", "ple"), "seed": (0, 1)})``."""
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("_") or "cell"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted-key ``overrides`` set; an unknown key fails naming
    the keys that exist at that level, and the result is validated."""
    out = config.copy_and_resolve_references()
    for key, value in overrides.items():
        configlib.check_key(out, key, f"sweep override {key!r}")
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[last] = tuple(value) if isinstance(value, list) else value
    configlib.validate(out)
    return out


def cell_seed_dirs(workdir: pathlib.Path, cell: Cell, seeds: Sequence[int]) -> list[pathlib.Path]:
    return [workdir / cell.name / f"seed_{s}" for s in seeds]


def is_finished(workdir: pathlib.Path, cell: Cell, seeds: Sequence[int]) -> bool:
    return all((d / "results.json").exists() for d in cell_seed_dirs(workdir, cell, seeds))


def _train_cell(
    config: ml_collections.ConfigDict,
    cell: Cell,
    seeds: Sequence[int],
    cell_dir: pathlib.Path,
    parallel_seeds: bool,
    train_one: Callable[..., Any] | None = None,
    train_together: Callable[..., Any] | None = None,
) -> bool:
    """Trains one cell's unfinished seeds (together, or one after another); False when
    training stopped before the end (preemption: SIGTERM), True when every seed finished."""
    from mtl_jax.seeds import seed_config, train_seeds
    from mtl_jax.train import train_and_evaluate

    train_together = train_together or train_seeds
    train_one = train_one or (lambda c, s, d: train_and_evaluate(seed_config(c, s), str(d)))
    cell_config = apply_overrides(config, cell.overrides)
    seed_dirs = [cell_dir / f"seed_{seed}" for seed in seeds]
    if parallel_seeds:
        train_together(cell_config, list(seeds), cell_dir)
    else:
        for seed, seed_dir in zip(seeds, seed_dirs, strict=True):
            if not (seed_dir / "results.json").exists():
                train_one(cell_config, seed, seed_dir)
            if not (seed_dir / "results.json").exists():
                break  # preempted: stop here, the rerun resumes this seed
    return all((d / "results.json").exists() for d in seed_dirs)


def _worker_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("mtl_jax").setLevel(logging.INFO)


def run_sweep(
    config: ml_collections.ConfigDict,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    workdir: str | pathlib.Path,
    *,
    parallel_seeds: bool = True,
    jobs: int = 1,
    train_one: Callable[..., Any] | None = None,
    train_together: Callable[..., Any] | None = None,
) -> dict[str, str]:
    """Trains every unfinished cell; returns ``{cell: "done" | "skipped" | "pending" |
    "interrupted" | error}``. A preempted cell (SIGTERM: it checkpoints and returns) stops
    the sweep; rerunning resumes it.

    ``jobs`` > 1 trains that many cells at once in worker processes (on a CPU host, small
    models leave cores idle within one process). A cell that fails (diverges, bad
    override) is logged, its traceback written to ``<cell>/error.txt``, and the sweep goes
    on: one cell never costs the others."""
    workdir = pathlib.Path(workdir)
    with WorkdirLock(workdir, purpose="sweep"):
        return _run_sweep(
            config, cells, seeds, workdir, parallel_seeds, jobs, train_one, train_together
        )


def _run_sweep(
    config: ml_collections.ConfigDict,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    workdir: pathlib.Path,
    parallel_seeds: bool,
    jobs: int,
    train_one: Callable[..., Any] | None,
    train_together: Callable[..., Any] | None,
) -> dict[str, str]:
    todo = [c for c in cells if not is_finished(workdir, c, seeds)]
    status = {c.name: "pending" if c in todo else "skipped" for c in cells}
    status_file = workdir / "sweep_status.json"
    reporting.write_json(status_file, status)  # the sweep's order, for --report_only meanwhile
    log.info(
        "sweep: %d cells x %d seeds in %s; %d finished, %d to train (%d at a time)",
        len(cells), len(seeds), workdir, len(cells) - len(todo), len(todo), jobs,
    )  # fmt: skip
    for cell in todo:
        cell_dir = workdir / cell.name
        cell_dir.mkdir(parents=True, exist_ok=True)
        reporting.write_json(
            cell_dir / "cell.json", {"name": cell.name, "overrides": cell.overrides}
        )
    start = time.perf_counter()
    finished = 0

    def record(cell: Cell, error: BaseException | None, trace: str = "", done: bool = True) -> None:
        nonlocal finished
        finished += 1
        cell_dir = workdir / cell.name
        if error is not None:
            (cell_dir / "error.txt").write_text(trace)
            status[cell.name] = f"{type(error).__name__}: {error}"
            log.error(
                "cell %s failed: %s (see %s)", cell.name, status[cell.name], cell_dir / "error.txt"
            )
        else:
            (cell_dir / "error.txt").unlink(missing_ok=True)
            status[cell.name] = "done" if done else "interrupted"
        reporting.write_json(status_file, status)
        left = len(todo) - finished
        eta = reporting.format_eta(left * (time.perf_counter() - start) / finished)
        log.info(
            "cell %d/%d %s %s; %d left, ETA %s",
            finished,
            len(todo),
            cell.name,
            "failed" if error else status[cell.name],
            left,
            eta,
        )

    if jobs <= 1:
        for cell in todo:
            log.info("cell %s: %s", cell.name, cell.overrides)
            try:
                done = _train_cell(
                    config,
                    cell,
                    seeds,
                    workdir / cell.name,
                    parallel_seeds,
                    train_one,
                    train_together,
                )
            except Exception as e:  # noqa: BLE001 - reported per cell, the sweep goes on
                record(cell, e, traceback.format_exc())
            else:
                record(cell, None, done=done)
                if not done:
                    log.warning("cell %s was interrupted; stopping the sweep", cell.name)
                    break
    else:
        context = multiprocessing.get_context("spawn")  # JAX does not survive fork
        with concurrent.futures.ProcessPoolExecutor(
            jobs, context, initializer=_worker_logging
        ) as pool:
            futures = {
                pool.submit(
                    _train_cell, config, cell, list(seeds), workdir / cell.name, parallel_seeds
                ): cell
                for cell in todo
            }
            for future in concurrent.futures.as_completed(futures):
                if future.cancelled():
                    continue
                error = future.exception()
                trace = "".join(traceback.format_exception(error)) if error else ""
                done = error is None and future.result()
                record(futures[future], error, trace, done=done)
                if error is None and not done:
                    log.warning("cell %s was interrupted; stopping the sweep", futures[future].name)
                    for other in futures:
                        other.cancel()
    reporting.write_json(status_file, status)
    failed = {
        k: v for k, v in status.items() if v not in ("done", "skipped", "pending", "interrupted")
    }
    if failed:
        log.error("%d cells failed: %s", len(failed), sorted(failed))
    return status
