"""Where fetched data, model weights and derived caches live."""

from __future__ import annotations

import os
import pathlib


def cache_root() -> pathlib.Path:
    """``$MTL_JAX_DATA``, default ``~/.cache/mtl_jax`` (read at each call, so tests and users
    can point it elsewhere)."""
    return pathlib.Path(os.environ.get("MTL_JAX_DATA", "~/.cache/mtl_jax")).expanduser()
