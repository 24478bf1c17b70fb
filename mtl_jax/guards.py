"""Guards of the training loop: nothing non-finite or diverged is applied, kept or saved.

The jitted step refuses to apply a step whose loss, gradients or update are not finite (see
``step.make_train_step``: it reports ``applied``); ``StepGuard`` watches each step's loss on
the host, one step late so the device never waits for it, and stops the run after
``guards.max_skipped_steps`` consecutive refused steps or when the loss blows up while
staying finite (over ``guards.divergence_factor`` times its running median). Parameters are
checked for finiteness before every save (``all_finite``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl_jax.errors import UserError


class TrainingDivergedError(UserError, FloatingPointError):
    """Training diverged; the last good checkpoint in the workdir is left untouched."""

    exit_status = 1


class NonFiniteLossError(TrainingDivergedError):
    """The loss (or gradients, or parameters) stopped being finite."""


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # Consecutive steps with a non-finite loss, gradient or update that are skipped
            # (not applied) before the run stops; 0 stops at the first.
            max_skipped_steps=10,
            # Stop when a step's loss exceeds this many times the median of the last
            # divergence_window applied steps' losses (a blow-up that stays finite); 0: off.
            divergence_factor=1000.0,
            divergence_window=100,
        )
    )


# A median below this counts as this much: a loss that rises from 1e-7 to 1e-3 has not
# diverged, whatever the ratio.
_MEDIAN_FLOOR = 1e-3


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool: every floating leaf of ``tree`` is finite (jit it with the tree's
    shardings; each device reduces its own shard)."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class StepGuard:
    """Host-side watch over the train step's loss; raises ``TrainingDivergedError``.

    ``watch(step, metrics)`` takes the step's device metrics without syncing; the previous
    step's ``loss``/``applied`` are fetched then (by now that step has finished and the
    current one is queued behind it). ``flush()`` judges the pending step at once: the loop
    calls it before anything is saved, so a save never follows an unjudged step.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        describe_last_good: Callable[[], str],
        task_names: Sequence[str] = (),
        history: dict[str, Any] | None = None,
    ):
        """``history``: what ``history()`` returned when the resumed checkpoint was saved."""
        self.max_skipped = int(config.max_skipped_steps)
        self.factor = float(config.divergence_factor)
        self._recent: collections.deque[float] = collections.deque(
            maxlen=max(int(config.divergence_window), 1)
        )
        self._describe_last_good = describe_last_good
        self.task_names = tuple(task_names)
        history = history or {}
        self._recent.extend(float(v) for v in history.get("recent_losses", ()))
        self.consecutive_skipped = int(history.get("consecutive_skipped", 0))
        self.skipped_steps = int(history.get("skipped_steps", 0))
        self._pending: tuple[int, dict] | None = None

    def history(self) -> dict[str, Any]:
        """What a resumed run needs to judge as this one would (saved in the checkpoint)."""
        return {
            "recent_losses": list(self._recent),
            "consecutive_skipped": self.consecutive_skipped,
            "skipped_steps": self.skipped_steps,
        }

    def watch(self, step: int, metrics: dict) -> None:
        previous, self._pending = self._pending, (step, metrics)
        if previous is not None:
            self._judge(*previous)

    def watch_many(self, last_step: int, metrics: dict) -> None:
        """``watch`` for one dispatch of K steps ending at ``last_step``, whose metrics
        carry a leading K axis: judged together, one dispatch late."""
        self.watch(last_step, metrics)

    def flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._judge(*pending)

    def _judge(self, step: int, metrics: dict) -> None:
        # One step's metrics are scalars, a dispatch's carry a leading K axis: both as (K,).
        loss, applied = map(np.atleast_1d, jax.device_get((metrics["loss"], metrics["applied"])))
        first = step - len(loss) + 1
        for i in range(len(loss)):
            # The task losses only name the culprit in an error: fetched then, not each step.
            self.observe(
                first + i,
                float(loss[i]),
                bool(applied[i]),
                lambda i=i: np.asarray(jax.device_get(metrics["task_losses"])).reshape(
                    len(loss), -1
                )[i],
            )

    def observe(
        self,
        step: int,
        loss: float,
        applied: bool,
        task_losses: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> None:
        """Judges one step's host values (``applied``: the step's update was applied);
        ``task_losses`` (or a function fetching them) only go into an error message."""
        if not applied:
            self.skipped_steps += 1
            self.consecutive_skipped += 1
            if self.consecutive_skipped > self.max_skipped:
                raise NonFiniteLossError(
                    f"the loss, gradients or update were not finite for "
                    f"{self.consecutive_skipped} consecutive steps up to step {step} "
                    f"(guards.max_skipped_steps={self.max_skipped}; loss {loss}"
                    f"{self._per_task(task_losses)}); those steps were not applied. "
                    f"{self._describe_last_good()} Lower optim.learning_rate or check the data."
                )
            return
        self.consecutive_skipped = 0
        if self.factor > 0 and self._recent:
            median = max(float(np.median(self._recent)), _MEDIAN_FLOOR)
            if abs(loss) > self.factor * median:
                raise TrainingDivergedError(
                    f"the loss diverged at step {step}: {loss:.4g} is over "
                    f"guards.divergence_factor={self.factor:g} times the median {median:.4g} "
                    f"of the last {len(self._recent)} steps{self._per_task(task_losses)}. "
                    f"{self._describe_last_good()} Lower optim.learning_rate, or raise "
                    "guards.divergence_factor (0 turns the rule off)."
                )
        self._recent.append(abs(loss))

    def _per_task(self, task_losses: np.ndarray | Callable[[], np.ndarray] | None) -> str:
        if callable(task_losses):
            task_losses = task_losses()
        if task_losses is None or len(task_losses) != len(self.task_names):
            return ""
        pairs = ", ".join(
            f"{n}={v:.4g}" for n, v in zip(self.task_names, task_losses.tolist(), strict=True)
        )
        return f"; task losses {pairs}"
