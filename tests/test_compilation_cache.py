import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from mtl_jax import compilation_cache

NAMES = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_compilation_cache_max_size",
)


def test_enable_writes_compiled_programs_to_disk_and_exports_the_setting(tmp_path, monkeypatch):
    before = {name: getattr(jax.config, name) for name in NAMES}
    for name in NAMES:  # restored by monkeypatch at teardown
        monkeypatch.setenv(name.upper(), os.environ.get(name.upper(), ""))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    try:
        assert compilation_cache.enable_from_flag("") is None
        path = compilation_cache.enable(tmp_path / "xla")
        assert path == tmp_path / "xla"
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(path)  # for worker processes
        assert int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0  # the file lock is on
        x = jnp.arange(12.0).reshape(3, 4)
        np.testing.assert_allclose(
            jax.jit(lambda a: jnp.tanh(a) @ a.T * 3.25)(x), np.tanh(x) @ x.T * 3.25, rtol=1e-5
        )
        assert [p for p in path.iterdir() if p.name.endswith("-cache")]
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        jax_cache.reset_cache()
