"""TensorBoard event files from the run's metric records (no TensorFlow needed).

Every record that goes into ``metrics.jsonl`` also goes, as scalars, into
``<workdir>/tensorboard/``: train records under ``train/`` (losses, per-task losses,
balancing weights, gradient norms and cosines, gate statistics, learning rates, steps/s and
examples/s), validation records under ``validation/<task>/<metric>``. Written with
tensorboardX; open with ``tensorboard --logdir runs/`` (one run per workdir, so a sweep's
cells and seeds show side by side).
"""

from __future__ import annotations

import pathlib
from typing import Any

_SKIPPED = ("step", "split")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """``{tag: value}`` of a metrics record's numbers (nested dicts joined with '/')."""
    split = record.get("split", "train")
    out: dict[str, float] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = float(value)

    for key, value in record.items():
        if key in _SKIPPED:
            continue
        # Validation records hold {"metrics": {task: {metric: v}}}: drop the "metrics" level.
        visit(split if key == "metrics" else f"{split}/{key}", value)
    return out


class TensorBoardWriter:
    """Scalars of each record at its step; ``purge_step`` (a resumed run) tells TensorBoard
    to drop what an interrupted attempt wrote from that step on."""

    def __init__(self, logdir: str | pathlib.Path, purge_step: int | None = None):
        from tensorboardX import SummaryWriter  # imported only when a run writes events

        self._writer = SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=30)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._writer.close()
