"""Device mesh, shardings and global-batch assembly.

Data parallelism: the batch is sharded over the mesh's ``data`` axis and parameters are
replicated. Each process hands in its local rows; ``jax.make_array_from_process_local_data``
stitches them into one global ``jax.Array`` that the jitted step consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: the first ``num_devices`` or all)."""
    if devices is None:
        available = jax.devices()
        if num_devices is not None and not 1 <= num_devices <= len(available):
            raise ValueError(f"num_devices={num_devices} but {len(available)} devices exist")
        devices = available[: num_devices or len(available)]
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, jax.P(DATA_AXIS))


def data_axis_size(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def to_global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles this process's numpy rows into global arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        # Same result; one batched transfer is about twice as fast for a tree of columns.
        return jax.device_put(local_batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def to_host(tree: Any) -> Any:
    """Fetches (possibly multi-process) global arrays into host numpy arrays."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
