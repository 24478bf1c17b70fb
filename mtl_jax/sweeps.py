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

import dataclasses
import importlib.util
import json
import logging
import pathlib
import re
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections

from mtl_jax import configlib, reporting
from mtl_jax.configlib import ConfigError

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


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("_") or "cell"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted-key ``overrides`` set; an unknown key fails naming
    the keys that exist at that level, and the result is validated."""
    out = config.copy_and_resolve_references()
    for key, value in overrides.items():
        node, parts = out, key.split(".")
        for depth, part in enumerate(parts):
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in keys:
                where = ".".join(["config", *parts[:depth]])
                raise ConfigError(
                    f"sweep override {key!r}: unknown key {where}.{part}; valid keys of "
                    f"{where}: {sorted(keys) or '(none: it is a value)'}"
                )
            if depth == len(parts) - 1:
                node[part] = tuple(value) if isinstance(value, list) else value
            else:
                node = node[part]
    configlib.validate(out)
    return out


def cell_seed_dirs(workdir: pathlib.Path, cell: Cell, seeds: Sequence[int]) -> list[pathlib.Path]:
    return [workdir / cell.name / f"seed_{s}" for s in seeds]


def is_finished(workdir: pathlib.Path, cell: Cell, seeds: Sequence[int]) -> bool:
    return all((d / "results.json").exists() for d in cell_seed_dirs(workdir, cell, seeds))


def run_sweep(
    config: ml_collections.ConfigDict,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    workdir: str | pathlib.Path,
    *,
    parallel_seeds: bool = True,
    train_one: Callable[..., Any] | None = None,
    train_together: Callable[..., Any] | None = None,
) -> dict[str, str]:
    """Trains every unfinished cell; returns ``{cell: "done" | "skipped" | error}``.

    A cell that fails (diverges, bad override) is logged, its traceback written to
    ``<cell>/error.txt``, and the sweep goes on: one cell never costs the others."""
    if train_one is None or train_together is None:
        from mtl_jax.seeds import seed_config, train_seeds
        from mtl_jax.train import train_and_evaluate

        train_together = train_together or train_seeds
        train_one = train_one or (lambda c, s, d: train_and_evaluate(seed_config(c, s), str(d)))
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    durations: list[float] = []
    todo = [c for c in cells if not is_finished(workdir, c, seeds)]
    log.info(
        "sweep: %d cells x %d seeds in %s; %d finished, %d to train",
        len(cells), len(seeds), workdir, len(cells) - len(todo), len(todo),
    )  # fmt: skip
    for cell in cells:
        if cell not in todo:
            status[cell.name] = "skipped"
            continue
        start = time.perf_counter()
        cell_dir = workdir / cell.name
        cell_dir.mkdir(parents=True, exist_ok=True)
        reporting.write_json(
            cell_dir / "cell.json", {"name": cell.name, "overrides": cell.overrides}
        )
        index = todo.index(cell) + 1
        log.info("cell %d/%d %s: %s", index, len(todo), cell.name, cell.overrides)
        try:
            cell_config = apply_overrides(config, cell.overrides)
            if parallel_seeds:
                train_together(cell_config, list(seeds), cell_dir)
            else:
                for seed, seed_dir in zip(seeds, cell_seed_dirs(workdir, cell, seeds), strict=True):
                    if not (seed_dir / "results.json").exists():
                        train_one(cell_config, seed, seed_dir)
        except Exception as e:  # noqa: BLE001 - reported per cell, the sweep goes on
            (cell_dir / "error.txt").write_text(traceback.format_exc())
            status[cell.name] = f"{type(e).__name__}: {e}"
            log.error(
                "cell %s failed: %s (see %s)", cell.name, status[cell.name], cell_dir / "error.txt"
            )
            continue
        (cell_dir / "error.txt").unlink(missing_ok=True)
        durations.append(time.perf_counter() - start)
        status[cell.name] = "done"
        left = len(todo) - index
        eta = reporting.format_eta(left * sum(durations) / len(durations))
        log.info(
            "cell %s done in %.0f s; %d cells left, ETA %s", cell.name, durations[-1], left, eta
        )
    failed = {k: v for k, v in status.items() if v not in ("done", "skipped")}
    (workdir / "sweep_status.json").write_text(json.dumps(status, indent=2) + "\n")
    if failed:
        log.error("%d cells failed: %s", len(failed), sorted(failed))
    return status
