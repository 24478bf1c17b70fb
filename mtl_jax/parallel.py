"""Device mesh, shardings and global-batch assembly.

The mesh is 2-D, (``data``, ``model``). The batch is sharded over ``data`` (and replicated
over ``model``). Parameters carry logical axis names (``vocab``, ``embed``, ``expert``,
``mlp_in``, ``mlp_out``; see ``LOGICAL_AXES``) and ``config.mesh.axis_rules`` maps each to a
mesh axis or to nothing (replicated). The default shards embedding tables by rows (``vocab``)
over ``model``, the layout that lets tables outgrow one device, and replicates dense layers.
Each process hands in its local rows; ``jax.make_array_from_process_local_data`` stitches
them into one global ``jax.Array`` that the jitted step consumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

log = logging.getLogger("mtl_jax")

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)
# Logical names that modules give their parameters' axes (flax ``with_logical_partitioning``).
LOGICAL_AXES = ("vocab", "embed", "expert", "mlp_in", "mlp_out")
DEFAULT_AXIS_RULES = {"vocab": MODEL_AXIS, "embed": "", "expert": "", "mlp_in": "", "mlp_out": ""}


def make_mesh(
    num_devices: int | None = None,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (``data``, ``model``) mesh over ``devices`` (default: the first ``num_devices`` or
    all), ``model`` devices along the model axis and the rest along ``data``."""
    if devices is None:
        available = jax.devices()
        if num_devices is not None and not 1 <= num_devices <= len(available):
            raise ValueError(f"num_devices={num_devices} but {len(available)} devices exist")
        devices = available[: num_devices or len(available)]
    if model < 1 or len(devices) % model:
        raise ValueError(
            f"mesh model axis {model} does not divide the {len(devices)} devices; use a "
            f"divisor of {len(devices)}"
        )
    return jax.make_mesh(
        (len(devices) // model, model),
        MESH_AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def parse_mesh_shape(text: str) -> tuple[int | None, int]:
    """``"8"`` -> (8, 1) data-parallel; ``"4x2"`` -> (8, 2): 4 data x 2 model devices."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) < 1:
        raise ValueError(f"mesh {text!r} is not N or DATAxMODEL (e.g. 8 or 4x2)")
    data, model = (sizes[0], 1) if len(sizes) == 1 else sizes
    return data * model, model


def check_axis_rules(rules: dict[str, str]) -> None:
    """Unknown logical axes and unknown mesh axes are errors that list the valid ones."""
    unknown = sorted(set(rules) - set(LOGICAL_AXES))
    if unknown:
        raise ValueError(
            f"mesh.axis_rules has unknown logical axes {unknown}; valid: {LOGICAL_AXES}"
        )
    for name, axis in rules.items():
        if axis not in ("", *MESH_AXES):
            raise ValueError(
                f"mesh.axis_rules.{name}={axis!r}: valid mesh axes are {MESH_AXES} or '' "
                "(replicated)"
            )


def param_shardings(boxed_params: Any, mesh: Mesh, rules: dict[str, str]) -> Any:
    """NamedShardings for the (unboxed) parameter tree from an abstract init whose leaves may
    be ``nn.LogicallyPartitioned`` boxes.

    Each logical axis goes to the mesh axis its rule names. An axis whose size the mesh axis
    does not divide (JAX shards evenly only) stays whole, with a log line; so does a mesh axis
    already used by an earlier axis of the same parameter.
    """
    check_axis_rules(rules)

    def one(path, leaf) -> NamedSharding:
        if not isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, jax.P())
        shape, axes, used = leaf.value.shape, [], set()
        for size, name in zip(shape, leaf.names, strict=True):
            axis = rules.get(name, "") if name else ""
            if axis and (axis in used or mesh.shape[axis] == 1):
                axis = ""
            if axis and size % mesh.shape[axis]:
                log.debug(
                    "%s: axis %s (%d) does not divide over %s=%d; kept whole",
                    jax.tree_util.keystr(path),
                    name,
                    size,
                    axis,
                    mesh.shape[axis],
                )
                axis = ""
            used.add(axis)
            axes.append(axis or None)
        return NamedSharding(mesh, jax.P(*axes))

    return jax.tree_util.tree_map_with_path(
        one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def sharded_params(shardings: Any) -> list[str]:
    """``"path: spec"`` of every parameter split over some mesh axis (for the run log)."""
    return [
        f"{jax.tree_util.keystr(path)}: {tuple(s.spec)}"
        for path, s in jax.tree_util.tree_leaves_with_path(shardings)
        if any(axis is not None for axis in s.spec)
    ]


def like_params(tree: Any, abstract_params: Any, shardings: Any, default: NamedSharding) -> Any:
    """Shardings for a tree that holds copies of the parameters (an optimizer state: Adam's
    moments, Adagrad's accumulators): a leaf whose key path ends with a parameter's path and
    has its shape gets that parameter's sharding, one with its leading dimension only (a
    per-row state) the sharding of its rows; other leaves get ``default``.

    (``optax.tree_map_params`` does this from the optimizer's init, but not through
    ``optax.partition``'s masked inner states.)
    """
    by_path = {
        tuple(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(abstract_params),
            jax.tree.leaves(shardings),
            strict=True,
        )
    }

    def one(path, leaf):
        for start in range(len(path)):
            shape, sharding = by_path.get(tuple(path[start:]), (None, None))
            if sharding is None:
                continue
            if shape == getattr(leaf, "shape", None):
                return sharding
            if len(shape) > 1 and getattr(leaf, "shape", None) == shape[:1]:
                # A per-row state (row-wise Adagrad's accumulator): split like the rows.
                return NamedSharding(sharding.mesh, jax.P(*sharding.spec[:1]))
        return default

    return jax.tree_util.tree_map_with_path(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, jax.P(DATA_AXIS))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """K batches stacked on a leading axis (one dispatch of K steps): the batch axis,
    second, split over ``data``."""
    return NamedSharding(mesh, jax.P(None, DATA_AXIS))


def to_global_batches(local_batches: Sequence[Any], mesh: Mesh) -> Any:
    """K of this process's batches -> one tree of global arrays (K, batch, ...), in one
    transfer (``to_global_batch`` for a stack)."""
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *local_batches)
    return _to_global(stacked, stacked_batch_sharding(mesh))


def data_axis_size(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def to_global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles this process's numpy rows into global arrays sharded over ``data``."""
    return _to_global(local_batch, batch_sharding(mesh))


def _to_global(local: Any, sharding: NamedSharding) -> Any:
    if jax.process_count() == 1:
        # Same result; one batched transfer is about twice as fast for a tree of columns.
        return jax.device_put(local, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
    )


def to_host(tree: Any) -> Any:
    """Fetches (possibly multi-process) global arrays into host numpy arrays."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
