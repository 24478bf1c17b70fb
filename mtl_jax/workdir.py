"""One owner per workdir, and the workdir a run gets when none is named.

``WorkdirLock`` holds an exclusive ``fcntl`` lock on ``<workdir>/.lock`` for as long as a run
trains there, with the owner's host, pid and start time written in the file, so a second
process on the same workdir stops at once with a message naming the owner instead of
training beside it (duplicated metrics, racing checkpoint renames). The kernel drops the
lock when its process dies, however it dies, so a lock left by a killed run never needs
cleaning up. With several JAX processes, process 0 takes the lock and every process learns
whether it got it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import pathlib
import socket
from typing import IO

import jax
import numpy as np

from mtl_jax.errors import UserError

log = logging.getLogger("mtl_jax")

LOCK_NAME = ".lock"


class WorkdirBusyError(UserError):
    """Another live process owns the workdir."""


def default_workdir(config_spec: str) -> pathlib.Path:
    """``runs/<config file stem>[_<variant>]`` for ``--config=path/name.py[:variant]``."""
    path, _, variant = config_spec.partition(":")
    stem = pathlib.Path(path).stem
    name = f"{stem}_{variant}" if variant else stem
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return pathlib.Path("runs") / safe


def owner_text(lock_path: pathlib.Path) -> str:
    try:
        owner = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    return (
        f"process {owner.get('pid', '?')} on host {owner.get('host', '?')} "
        f"(started {owner.get('started', '?')})"
    )


class WorkdirLock:
    """Context manager: exclusive ownership of ``workdir`` (see the module docstring)."""

    def __init__(self, workdir: str | pathlib.Path, purpose: str = "training"):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.purpose = purpose
        self._file: IO[str] | None = None

    def __enter__(self) -> WorkdirLock:
        lead = jax.process_index() == 0
        error = self._acquire() if lead else None
        if jax.process_count() > 1:  # every process stops if process 0 did not get it
            from jax.experimental import multihost_utils

            got = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not int(got):
                raise error or WorkdirBusyError(
                    f"workdir {self.workdir} is in use by another run (process 0 could not lock it)"
                )
        elif error is not None:
            raise error
        return self

    def _acquire(self) -> WorkdirBusyError | None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return WorkdirBusyError(
                f"workdir {self.workdir} is in use by {owner_text(self.path)}; wait for it to "
                f"finish, stop it, or use another --workdir (lock file {self.path})"
            )
        except OSError as e:  # a filesystem without locks: run, but say so
            log.warning("cannot lock %s (%s); not guarding against a second writer", self.path, e)
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                    "purpose": self.purpose,
                }
            )
        )
        handle.flush()
        self._file = handle
        return None

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
