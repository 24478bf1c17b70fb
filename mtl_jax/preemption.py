"""Preemption: turn SIGTERM (what cloud VMs send before taking a machine back) into "save a
checkpoint at the next step boundary and exit cleanly".

With several processes, JAX's own preemption sync point (set up by
``jax.distributed.initialize``) makes every host stop at the same step; a single process
just watches for the signal itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("mtl_jax")


class PreemptionWatch:
    """A context manager that records SIGTERM instead of dying, and says at each step
    whether the run should checkpoint and stop there."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if not self.requested:
            log.warning("received signal %d: will checkpoint at the next step and stop", signum)
        self.requested = True

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def reached(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (the same answer on every host)."""
        if jax.process_count() > 1:
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # no preemption sync manager in this runtime
                pass
        return self.requested
