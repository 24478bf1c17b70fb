"""Test-wide setup: 8 forced CPU devices, so sharding tests run on any machine, quick
compilation, and one persistent XLA compilation cache for the whole session.

Both are set at import time, before JAX initialises its backend, and both reach the
environment, so the pytest-xdist workers and the scripts tests start in subprocesses
inherit them (mtl_jax/compilation_cache.py). The cache matters because tests compile the
same step many times (a run and its resume, a script and its rerun).
"""

import os
import shutil
import tempfile

# The backend's optimisation level 0: the suite's time is mostly XLA compiling many small
# programs once each (LLVM at -O0 compiles them about twice as fast); tests assert results,
# not speed, and the benchmarks in experiments/ run at the default level.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402 - after the XLA flags above

from mtl_jax import compilation_cache  # noqa: E402

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller, or a plain pytest run
    os.environ["MTL_JAX_TEST_CACHE_OWNER"] = str(os.getpid())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache all
    compilation_cache.enable(tempfile.mkdtemp(prefix="mtl_jax_test_xla_"))


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
