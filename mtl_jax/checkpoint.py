"""Orbax checkpoints: the latest full training state for resume, and the best parameters.

``checkpoints/`` keeps the last few steps as a composite of the train state, the grain
iterator (so a resumed run sees exactly the batches it would have seen), and a JSON ``meta``
item (host-side progress: early-stopping counters and the run's config). ``best/`` keeps the
parameters of the best validation step; the test split is evaluated on those.

Orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-save leaves the previous step as the latest one. Every save records a fingerprint of
its arrays (mtl_jax/integrity.py) in the same commit, checked at restore: a checkpoint
whose files fail to restore, or restore to different values, is damaged and set aside
(``<step>.damaged``), and the next older one is used; one written by different code (other
parameter paths or shapes) is an error naming the differences, and is left alone.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import grain
import orbax.checkpoint as ocp

from mtl_jax import integrity
from mtl_jax.errors import UserError

log = logging.getLogger("mtl_jax")

# Config keys that may change between a checkpoint and its resume without changing the math
# (and every ``mesh.*`` and ``guards.*`` key: Orbax reshards a checkpoint onto any mesh, and
# the guards only decide when a run stops).
RESUMABLE_KEYS = (
    "train.log_every",
    "train.tensorboard",
    "train.steps_per_dispatch",  # the loop runs single steps up to where K steps fit again
    "train.eval_batch_size",
    "checkpoint.max_to_keep",
    "checkpoint.async_save",
)


class IncompatibleCheckpointError(UserError, ValueError):
    """The workdir holds a checkpoint of a run with a different configuration (or code)."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint's files do not restore to what was saved."""


class NoIntactCheckpointError(UserError, RuntimeError):
    """Every checkpoint of a kind was damaged; they are set aside, the message says where."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Keys added after checkpoints were already being written, with the value that behaves as
# the code did before them: a checkpoint without the key resumes under that value.
ADDED_KEYS = {
    "balancing.task_gradients": "batched",
    "balancing.gramian_at": "trunk",
    "optim.schedule": "warmup_cosine",
    "optim.end_fraction": 0.01,
    "optim.decay_rate": 0.1,
    "optim.decay_steps": 0,
    "optim.step_boundaries": [0.5, 0.75],
    "optim.step_factor": 0.1,
    "model.embedding_dtype": "float32",
    "optim.sparse_embedding_updates": False,
    "data.prepared": "",
    "data.window_blocks": 64,
    "ranking.fusion_mode": "sum",
    "data.cold_item_fraction": 0.0,
    "negatives.task": "",
    "negatives.per_positive": 4,
    "negatives.sampling": "uniform",
    "negatives.popularity_power": 0.75,
    "negatives.logq_correction": True,
}
# Keys of file schemas (``features.<name>.<key>``, ``data.labels.<task>.<key>``) added since.
ADDED_SCHEMA_KEYS = {"separator": "|", "max_length": 0, "classes": [], "no_labels": "none"}


def _as_before(key: str, value: Any) -> bool:
    """Whether ``value`` of a key a checkpoint lacks behaves as the code that wrote it: an
    added key at its backward-compatible value, or a method kwarg left to its default."""
    if key in ADDED_KEYS:
        return value == ADDED_KEYS[key]
    leaf = key.rpartition(".")[2]
    if key.startswith(("features.", "data.labels.")) and leaf in ADDED_SCHEMA_KEYS:
        return value == ADDED_SCHEMA_KEYS[leaf]
    return key.startswith("balancing.") and value is None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """``{key: (saved value, current value)}`` for keys that differ and matter for resume."""
    a, b = _flatten(saved), _flatten(current)
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
        for k in sorted(set(a) | set(b))
        if k not in RESUMABLE_KEYS
        and not k.startswith(("mesh.", "guards.", "metrics."))
        and a.get(k) != b.get(k)
        and not (k not in a and _as_before(k, b.get(k)))
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
        # Two best steps: the previous one stays until the new one is complete.
        self._best = ocp.CheckpointManager(root / "best", options=options(2))

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(
        self, step: int, state: Any, data_iterator: grain.DatasetIterator, meta: dict[str, Any]
    ) -> None:
        """Saves state, iterator and ``meta`` (plus the state's fingerprint) at ``step``."""
        meta = {**meta, "fingerprint": integrity.fingerprint(state)}
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
            keys = "; ".join(f"{k}: checkpoint={a!r} now={b!r}" for k, (a, b) in diff.items())
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self._latest.directory} was written by a "
                f"run with a different config ({keys}); use a new --workdir, or restore those "
                "values to resume"
            )
        return meta

    def check_structure(
        self, manager: ocp.CheckpointManager, item: str, step: int, target: Any
    ) -> None:
        """``IncompatibleCheckpointError`` naming the parameter paths where the checkpoint
        at ``step`` and ``target`` (what this code builds) differ; exceptions from reading
        the checkpoint's metadata propagate (the caller treats them as damage)."""
        saved = ocp.StandardCheckpointHandler().metadata(
            pathlib.Path(manager.directory) / str(step) / item
        )
        tree = getattr(saved, "tree", saved)
        differences = integrity.structure_differences(tree, target)
        if differences:
            shown = "; ".join(differences[:20])
            more = f"; ... and {len(differences) - 20} more" if len(differences) > 20 else ""
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {manager.directory} holds other parameters "
                f"than this code builds (the code changed since it was written): {shown}{more}; "
                "use a new --workdir, or the code that wrote it"
            )

    def restore(
        self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator
    ) -> tuple[Any, dict[str, Any]]:
        """Restores state (with the shardings of ``abstract_state``), the iterator, and meta;
        ``CheckpointDamagedError`` when the restored arrays differ from what was saved."""
        restored = self._latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state, meta = restored["state"], restored["meta"]
        _verify(meta.get("fingerprint"), state, f"checkpoint {step}")
        return state, meta

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """Only the train state of checkpoint ``step`` (for inspection and comparisons)."""
        return self._latest.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]

    def restore_newest(
        self,
        abstract_state: Any,
        make_iterator: Callable[[int], grain.DatasetIterator],
        config: dict[str, Any],
    ) -> tuple[int, Any, dict[str, Any], grain.DatasetIterator] | None:
        """``(step, state, meta, iterator)`` of the newest checkpoint that restores intact,
        or None if there is none. ``abstract_state`` is the target tree, or a function of the
        step giving it (staged training: a stage's optimizer state has its own structure);
        ``make_iterator(step)`` a fresh data iterator, restored into for each attempt, so
        the one returned holds the position of the checkpoint actually restored.

        A checkpoint that fails to restore or restores to other values than were saved
        (files truncated, missing, flipped) is renamed ``<step>.damaged`` and kept for
        inspection, and the next older one is tried: a damaged latest checkpoint costs the
        steps since the one before it, never the run. A checkpoint from a different config,
        or whose parameters differ from what this code builds, raises
        ``IncompatibleCheckpointError`` and is left as it is. A checkpoint that disappears
        while being read (another process deleted it) is skipped, not set aside.
        """
        for step in sorted(self._latest.all_steps(), reverse=True):
            target = abstract_state(step) if callable(abstract_state) else abstract_state
            try:
                self.check_compatible(step, config)
                self.check_structure(self._latest, "state", step, target)
                data_iterator = make_iterator(step)
                state, meta = self._restore_retrying(step, target, data_iterator)
                return step, state, meta, data_iterator
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any other failure to read means "damaged"
                quiet_orphaned_reads()
                if not (pathlib.Path(self._latest.directory) / str(step)).exists():
                    log.warning("checkpoint at step %d disappeared while read; skipped", step)
                    self._latest.reload()
                    continue
                damaged = _set_aside(self._latest, step)
                log.warning(
                    "checkpoint at step %d is damaged (%s); moved to %s, trying an older one",
                    step, _describe(e), damaged,
                )  # fmt: skip
        return None

    def _restore_retrying(self, step: int, target: Any, data_iterator: Any) -> tuple[Any, dict]:
        """``restore``, tried a second time after a failure that is not damage evidence (an
        I/O error may be transient); a fingerprint mismatch is not retried."""
        try:
            return self.restore(step, target, data_iterator)
        except CheckpointDamagedError:
            raise
        except Exception as e:  # noqa: BLE001
            quiet_orphaned_reads()
            log.warning("checkpoint at step %d did not restore (%s); retrying", step, _describe(e))
            return self.restore(step, target, data_iterator)

    def save_best(self, step: int, params: Any) -> None:
        """Saves the best parameters at ``step``, replacing a copy of the same step left by
        an earlier attempt at this run (a resumed run re-reaches its steps)."""
        if step in self._best.all_steps():
            self._best.wait_until_finished()
            self._best.delete(step)
        self._best.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                meta=ocp.args.JsonSave({"fingerprint": integrity.fingerprint(params)}),
            ),
        )

    def best_steps(self) -> list[int]:
        return sorted(self._best.all_steps())

    def discard_best_after(self, step: int) -> None:
        """Deletes best checkpoints newer than ``step``: a run that resumes (or restarts)
        before them never chose them; they came from an attempt that did not checkpoint."""
        for stale in self.best_steps():
            if stale > step:
                log.warning("best checkpoint at step %d is newer than this run's; deleted", stale)
                self._best.delete(stale)

    def best_step(self) -> int | None:
        return self._best.latest_step()

    def restore_best(self, abstract_params: Any, step: int | None = None) -> Any:
        """The best parameters at ``step`` (default: the newest best checkpoint).

        A damaged best checkpoint is set aside (``best/<step>.damaged``) and the previous
        best one used, with a warning; ``NoIntactCheckpointError`` when none is left.
        """
        return self.restore_best_with_step(abstract_params, step)[1]

    def restore_best_with_step(
        self, abstract_params: Any, step: int | None = None
    ) -> tuple[int, Any]:
        """``(step restored, params)``; see ``restore_best``."""
        steps = self.best_steps()
        wanted = steps[-1] if step is None and steps else step
        if wanted is None or wanted not in steps:
            raise FileNotFoundError(
                f"no best checkpoint{'' if wanted is None else f' at step {wanted}'} under "
                f"{self._best.directory} (it holds steps {steps})"
            )
        for candidate in sorted((s for s in steps if s <= wanted), reverse=True):
            try:
                if abstract_params is not None:
                    self.check_structure(self._best, "params", candidate, abstract_params)
                items = {"params": ocp.args.StandardRestore(abstract_params)}
                if (pathlib.Path(self._best.directory) / str(candidate) / "meta").exists():
                    items["meta"] = ocp.args.JsonRestore()  # absent in older checkpoints
                restored = self._best.restore(candidate, args=ocp.args.Composite(**items))
                recorded = restored["meta"].get("fingerprint") if "meta" in items else None
                _verify(recorded, restored["params"], f"best checkpoint {candidate}")
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - as in restore_newest
                quiet_orphaned_reads()
                damaged = _set_aside(self._best, candidate)
                log.warning(
                    "best checkpoint at step %d is damaged (%s); moved to %s",
                    candidate, _describe(e), damaged,
                )  # fmt: skip
                continue
            if candidate != wanted:
                log.warning(
                    "using the best checkpoint of step %d instead of the damaged one of step %d",
                    candidate, wanted,
                )  # fmt: skip
            return candidate, restored["params"]
        raise NoIntactCheckpointError(
            f"no intact best checkpoint up to step {wanted} under {self._best.directory}; "
            "the damaged ones are set aside there as <step>.damaged"
        )

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _verify(recorded: dict[str, int] | None, tree: Any, what: str) -> None:
    """``CheckpointDamagedError`` if ``tree``'s fingerprint differs from ``recorded``
    (checkpoints written before fingerprints were recorded have none to check)."""
    if recorded is None:
        return
    mismatched = integrity.fingerprint_mismatches(recorded, tree)
    if mismatched:
        raise CheckpointDamagedError(
            f"{what}: restored values differ from those saved in {len(mismatched)} arrays "
            f"({', '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''})"
        )


def _is_orphaned_read_noise(exc: BaseException | None, origin: object = None) -> bool:
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(origin, "cr_code", None)  # an abandoned coroutine of Orbax's reads
    return code is not None and "orbax" in code.co_filename


def quiet_orphaned_reads() -> None:
    """After a restore fails, the reads Orbax had started still finish (or fail) in the
    background and print tracebacks: "RuntimeError: Event loop is closed", and abandoned
    read coroutines' own errors. Harmless (the failure was already handled) but alarming:
    log exactly those at debug level; every other exception still reaches the hooks that
    were installed."""
    if getattr(sys.excepthook, "_mtl_jax_quiet", False):
        return
    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, traceback):
        if not _is_orphaned_read_noise(value):
            previous_except(kind, value, traceback)

    def unraisablehook(unraisable):
        if _is_orphaned_read_noise(unraisable.exc_value, unraisable.object):
            log.debug("after a failed restore: %s", unraisable.exc_value)
        else:
            previous_unraisable(unraisable)

    excepthook._mtl_jax_quiet = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def _set_aside(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """Renames ``<step>`` to ``<step>.damaged`` (``.damaged1`` ... if taken)."""
    source = pathlib.Path(manager.directory) / str(step)
    target = source.with_name(f"{step}.damaged")
    suffix = 1
    while target.exists():
        target = source.with_name(f"{step}.damaged{suffix}")
        suffix += 1
    source.rename(target)
    manager.reload()
    return target
