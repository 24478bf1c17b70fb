"""JAX's persistent compilation cache, for work that compiles the same programs again: the
seeds of an ablation cell (one init per seed), cells that share a trunk (the same eval
step), a resumed or rerun training run.

Entries are keyed by the program, the devices and the compiler flags, so a hit is the
executable a fresh compile would give. The setting is exported through the environment as
well, so worker processes started afterwards (``experiments/ablate.py --jobs``) share it;
a size limit turns on JAX's file lock, so concurrent processes never read a half-written
entry.
"""

from __future__ import annotations

import os
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from mtl_jax import paths

MAX_BYTES = 4 * 2**30  # least recently used entries go first beyond this
MIN_COMPILE_SECONDS = 0.5  # cheaper compiles are not worth a file


def default_dir() -> pathlib.Path:
    """``$JAX_COMPILATION_CACHE_DIR`` when set, else ``<cache root>/xla``."""
    return pathlib.Path(
        os.environ.get("JAX_COMPILATION_CACHE_DIR") or paths.cache_root() / "xla"
    ).expanduser()


def enable(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """Turns the cache on for this process and the processes it starts; returns its
    directory (``default_dir()`` unless given)."""
    path = pathlib.Path(directory).expanduser() if directory else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": float(
            os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_COMPILE_SECONDS)
        ),
        "jax_compilation_cache_max_size": int(
            os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE", MAX_BYTES)
        ),
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    jax_cache.reset_cache()  # JAX opens its cache once; a later call must reopen it
    return path


FLAG_HELP = (
    "Directory of JAX's persistent compilation cache ('default': $JAX_COMPILATION_CACHE_DIR "
    "or ~/.cache/mtl_jax/xla; '' turns it off)."
)


def enable_from_flag(value: str) -> pathlib.Path | None:
    """What a ``--compilation_cache`` flag asks for (see ``FLAG_HELP``)."""
    if not value:
        return None
    return enable(None if value == "default" else value)
