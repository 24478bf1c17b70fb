"""What a run writes for people and tools: console progress, metrics.jsonl, JSON files.

Only process 0 writes; every record carries its step so a resumed run can drop the records
that its restored checkpoint predates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def is_lead_process() -> bool:
    return jax.process_index() == 0


def git_commit() -> str:
    """The commit the code runs from, suffixed ``-dirty`` when the tree has changes;
    ``$MTL_JAX_COMMIT`` when set (a copy of the tree without its .git, as on a lent GPU
    host, is told its commit that way: experiments/device_check.sh)."""
    if os.environ.get("MTL_JAX_COMMIT"):
        return os.environ["MTL_JAX_COMMIT"]
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def note_training_commit(meta: dict) -> None:
    """Appends this code's commit to ``meta["trained_commits"]`` (a run's checkpointed
    meta) unless it is the last one there: which code trained a run, across resumes."""
    commits = meta.setdefault("trained_commits", [])
    commit = git_commit()
    if not commits or commits[-1] != commit:
        commits.append(commit)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    return x


def short_commit(commit: str) -> str:
    """``git_commit()``'s value shortened for tables: 7 hex digits, ``-dirty`` kept."""
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def write_json(path: str | pathlib.Path, obj: Any) -> None:
    """Writes atomically (temp file + rename) so a kill never leaves half a file."""
    path = pathlib.Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class MetricsLog:
    """Appends one JSON record per line to ``metrics.jsonl`` and, with ``tensorboard_dir``,
    the same numbers as TensorBoard scalars (``mtl_jax.tensorboard``)."""

    def __init__(self, path: str | pathlib.Path, tensorboard_dir: str | pathlib.Path | None = None):
        self.path = pathlib.Path(path)
        self.tensorboard_dir = pathlib.Path(tensorboard_dir) if tensorboard_dir else None
        self._tensorboard: Any = None
        self._purge_step: int | None = None

    def reset(self) -> None:
        """A fresh start in this workdir: what an earlier attempt logged goes."""
        if not is_lead_process():
            return
        self.path.unlink(missing_ok=True)
        if self.tensorboard_dir is not None and self.tensorboard_dir.exists():
            shutil.rmtree(self.tensorboard_dir)

    def truncate_after(self, step: int) -> None:
        """Drops records newer than ``step``: a resumed run will write them again."""
        self._purge_step = step + 1
        if not self.path.exists() or not is_lead_process():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not is_lead_process():
            return
        with self.path.open("a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        if self.tensorboard_dir is not None:
            if self._tensorboard is None:
                from mtl_jax.tensorboard import TensorBoardWriter

                self._tensorboard = TensorBoardWriter(self.tensorboard_dir, self._purge_step)
            self._tensorboard.write(_jsonable(record))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


class Throughput:
    """Steps/s and ETA over log intervals; the first interval (compilation) is excluded."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._last_step = start_step
        self._last_time: float | None = None
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self._step_seconds: list[float] = []  # one mean step time per interval

    def mark(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        out = {}
        if self._last_time is not None and step > self._last_step:
            dt = now - self._last_time
            steps = step - self._last_step
            self.timed_steps += steps
            self.timed_seconds += dt
            self._step_seconds.append(dt / steps)
            rate = steps / dt
            out = {
                "steps_per_s": rate,
                "examples_per_s": rate * self.batch_size,
                "eta_s": (self.total_steps - step) / rate,
            }
        self._last_step, self._last_time = step, now
        return out

    def restart(self, step: int) -> None:
        """Starts a new interval at ``step``, so evaluation and checkpoint time is not counted."""
        self._last_step, self._last_time = step, time.perf_counter()

    @property
    def median_step_ms(self) -> float:
        """Median over the timed intervals of their mean step time (NaN before any)."""
        if not self._step_seconds:
            return float("nan")
        return 1e3 * statistics.median(self._step_seconds)

    @property
    def examples_per_s(self) -> float:
        if self.timed_seconds == 0:
            return float("nan")
        return self.timed_steps * self.batch_size / self.timed_seconds


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def mean_std(values: Sequence[float], digits: int = 4, signed: bool = False) -> str:
    """``"0.9582 +- 0.0024"`` (sample std) over seeds; the value alone for one seed;
    ``signed``: the mean with its sign (``"+0.0136 +- 0.0068"``), for changes."""
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"
    return f"{statistics.mean(values):{sign}.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def paired_interval(differences: Sequence[float]) -> dict[str, float]:
    """Mean of paired per-seed differences with its 95% Student-t interval (``low``,
    ``high``; NaN for fewer than two seeds): the interval excludes zero when the change is
    beyond what the seeds alone move."""
    from scipy import stats

    d = np.asarray(differences, np.float64)
    mean = float(d.mean()) if d.size else float("nan")
    if d.size < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan")}
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def report_main(doc: str, default_runs: str, build: Callable[[pathlib.Path], str]) -> None:
    """The command line of a report script: ``--runs`` (directory of run directories) and
    ``--out``; prints ``build(runs)`` and writes it to ``--out`` if given."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path(default_runs))
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    text = build(args.runs)
    print(text)
    if args.out:
        args.out.write_text(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
