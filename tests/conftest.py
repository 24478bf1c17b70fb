"""Test-wide setup: 8 forced CPU devices, so sharding tests run on any machine, and one
persistent XLA compilation cache for the whole session.

Both are environment variables set at import time, before JAX initialises its backend, so
the pytest-xdist workers and the scripts tests start in subprocesses inherit them. The
cache matters because tests compile the same step many times (a run and its resume, a
script and its rerun); its size limit makes JAX guard every read and write with a file
lock, so concurrent processes never read a half-written entry.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller, or a plain pytest run
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtl_jax_test_xla_")
    os.environ["MTL_JAX_TEST_CACHE_OWNER"] = str(os.getpid())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))


import pytest  # noqa: E402 - after the XLA flags above


def pytest_unconfigure(config):
    """The process that made the compilation cache removes it when the session ends."""
    if os.environ.get("MTL_JAX_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def text_encoder():
    """The pretrained all-MiniLM-L6-v2 encoder (fetched into the cache on first use); tests
    that need it skip, with the reason, where it cannot be had."""
    from mtl_jax import text

    try:
        return text.default_encoder()
    except text.ModelFilesError as e:
        pytest.skip(f"text model unavailable: {e}")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Each test module builds its own models and steps, whose executables nothing reuses
    afterwards; dropping them keeps a long-lived xdist worker's memory flat."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
