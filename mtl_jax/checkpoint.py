"""Orbax checkpoints: the latest full training state for resume, and the best parameters.

``checkpoints/`` keeps the last few steps as a composite of the train state, the grain
iterator (so a resumed run sees exactly the batches it would have seen), and a JSON ``meta``
item (host-side progress: early-stopping counters and the run's config). ``best/`` keeps the
parameters of the best validation step; the test split is evaluated on those.

Orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-save leaves the previous step as the latest one.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger("mtl_jax")

# Config keys that may change between a checkpoint and its resume without changing the math
# (and every ``mesh.*`` key: Orbax reshards a checkpoint onto any mesh).
RESUMABLE_KEYS = (
    "train.log_every",
    "train.eval_batch_size",
    "checkpoint.max_to_keep",
    "checkpoint.async_save",
)


class IncompatibleCheckpointError(ValueError):
    """The workdir holds a checkpoint of a run with a different configuration."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """``{key: (saved value, current value)}`` for keys that differ and matter for resume."""
    a, b = _flatten(saved), _flatten(current)
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
        for k in sorted(set(a) | set(b))
        if k not in RESUMABLE_KEYS and not k.startswith("mesh.") and a.get(k) != b.get(k)
    }


class Checkpointer:
    """Saves and restores a run's state in ``workdir``; see the module docstring."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 2, async_save: bool = True):
        root = pathlib.Path(workdir).absolute()
        self.directory = root

        def options(keep: int) -> ocp.CheckpointManagerOptions:
            return ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            )

        self._latest = ocp.CheckpointManager(root / "checkpoints", options=options(max_to_keep))
        self._best = ocp.CheckpointManager(root / "best", options=options(1))

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(
        self, step: int, state: Any, data_iterator: grain.DatasetIterator, meta: dict[str, Any]
    ) -> None:
        self._latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore_meta(self, step: int) -> dict[str, Any]:
        return self._latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def check_compatible(self, step: int, config: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's meta, or ``IncompatibleCheckpointError`` naming differing keys."""
        meta = self.restore_meta(step)
        diff = config_differences(meta.get("config", {}), config)
        if diff:
            lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, (a, b) in diff.items())
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self._latest.directory} was written by a "
                f"run with a different config:\n{lines}\nuse a new --workdir, or restore "
                "those values to resume"
            )
        return meta

    def restore(
        self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator
    ) -> tuple[Any, dict[str, Any]]:
        """Restores state (with the shardings of ``abstract_state``), the iterator, and meta."""
        restored = self._latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["meta"]

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """Only the train state of checkpoint ``step`` (for inspection and comparisons)."""
        return self._latest.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]

    def restore_newest(
        self, abstract_state: Any, data_iterator: grain.DatasetIterator, config: dict[str, Any]
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """``(step, state, meta)`` of the newest checkpoint that restores, or None if none.
        ``abstract_state`` is the target tree, or a function of the step giving it (staged
        training: a stage's optimizer state has its own structure).

        A checkpoint that fails to restore (files truncated or missing, e.g. a disk filled up
        or a copy was cut short) is renamed ``<step>.damaged`` and kept for inspection, and
        the next older one is tried, so a damaged latest checkpoint costs the steps since
        the one before it, never the run. A checkpoint from a different config still fails
        with ``IncompatibleCheckpointError``.
        """
        for step in sorted(self._latest.all_steps(), reverse=True):
            try:
                self.check_compatible(step, config)
                target = abstract_state(step) if callable(abstract_state) else abstract_state
                state, meta = self.restore(step, target, data_iterator)
                return step, state, meta
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means "damaged"
                damaged = self._set_aside(step)
                log.warning(
                    "checkpoint at step %d does not restore (%s: %s); moved to %s, trying "
                    "an older one",
                    step,
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                    damaged,
                )
        return None

    def _set_aside(self, step: int) -> pathlib.Path:
        source = pathlib.Path(self._latest.directory) / str(step)
        target = source.with_name(f"{step}.damaged")
        suffix = 1
        while target.exists():
            target = source.with_name(f"{step}.damaged{suffix}")
            suffix += 1
        source.rename(target)
        self._latest.reload()
        return target

    def save_best(self, step: int, params: Any) -> None:
        if step in self._best.all_steps():  # re-reached after a resume: identical params
            return
        self._best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))

    def best_step(self) -> int | None:
        return self._best.latest_step()

    def restore_best(self, abstract_params: Any) -> Any:
        step = self._best.latest_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint under {self._best.directory}")
        return self._best.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )["params"]

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()
