"""Where fetched data, model weights and derived caches live."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator


def cache_root() -> pathlib.Path:
    """``$MTL_JAX_DATA``, default ``~/.cache/mtl_jax`` (read at each call, so tests and users
    can point it elsewhere)."""
    return pathlib.Path(os.environ.get("MTL_JAX_DATA", "~/.cache/mtl_jax")).expanduser()


@contextlib.contextmanager
def staged_directory(out: pathlib.Path) -> Iterator[pathlib.Path]:
    """A new temporary sibling of ``out`` to write into, renamed to ``out`` when the block
    ends and removed if it raises: ``out`` appears complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
