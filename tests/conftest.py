"""Test-wide setup: 8 forced CPU devices, so sharding tests run on any machine.

The flag must be set before JAX initialises its backend, hence at import time here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402 - after the XLA flags above


@pytest.fixture(scope="session")
def text_encoder():
    """The pretrained all-MiniLM-L6-v2 encoder (fetched into the cache on first use); tests
    that need it skip, with the reason, where it cannot be had."""
    from mtl_jax import text

    try:
        return text.default_encoder()
    except text.ModelFilesError as e:
        pytest.skip(f"text model unavailable: {e}")
