"""Sparse row updates of embedding tables: a train step that reads and writes only the rows
its batch looks up, so its cost follows the batch, not the catalogue.

The step works on a *row view* of the state. For each id feature, the batch's ids are
de-duplicated into a fixed number of slots (``min(batch, rows)``, so the shapes are static
under jit; unused slots point past the table's end), the table's rows at those ids are
gathered into a small table, and the batch's ids become slot numbers. The model then runs on
the small tables unchanged (``MultiTaskModel.lookup_rows`` declares them at the small size),
so its gradient with respect to a small table is the per-id sum of the batch's gradients:
batch-sized, never table-sized. The optimizer's state is viewed the same way: every state
leaf that copies a table (Adagrad's accumulator, Adam's moments, a row-wise accumulator) is
gathered at the same slots, scalars (counts) pass whole. Any optax transformation then
updates the view, and the view's rows are scattered back into the tables and their state,
in place when the state is donated. Unused slots are dropped by the scatter.

What this means for the optimizers: Adagrad and SGD give the dense path's result (an
untouched row has zero gradient, and both leave it unchanged); Adam becomes lazy Adam (a
row's moments advance only on steps that touch it, with the global step's bias correction);
a coupled L2 or L1 penalty on the tables (``optim.embedding_l2``, ``regularization.l1``)
pulls only the rows a batch touches, the behaviour recommenders use, where the dense path
pulls every row every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# Where a feature's table sits in the parameters: params["embedding"][name]["embedding"].
TABLE_KEY = "embedding"


def table_path(name: str) -> tuple[str, str, str]:
    return ("embedding", name, TABLE_KEY)


def slot_count(batch_rows: int, table_rows: int) -> int:
    """Slots for a feature's distinct ids in a batch: no more than either the batch or the
    table can have."""
    return min(batch_rows, table_rows)


def unique_ids(ids: jax.Array, table_rows: int) -> tuple[jax.Array, jax.Array]:
    """``(slots, inverse)``: the distinct ids of ``ids`` (B,) in ``slot_count`` slots, unused
    slots holding ``table_rows`` (past the table's end), and each example's slot number, so
    that ``slots[inverse] == ids``."""
    flat = ids.reshape(-1)
    slots, inverse = jnp.unique(
        flat,
        size=slot_count(flat.shape[0], table_rows),
        fill_value=table_rows,
        return_inverse=True,
    )
    return slots.astype(jnp.int32), inverse.reshape(ids.shape).astype(ids.dtype)


def _path_keys(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(p.key if hasattr(p, "key") else str(p) for p in path)


def row_owners(tree: Any, tables: Mapping[str, tuple[int, ...]]) -> Any:
    """A tree like ``tree`` (parameters, or an optimizer state holding copies of them) whose
    leaves name the feature whose table rows they hold, or ``""``: a leaf whose key path
    ends with a table's path and whose leading dimension is that table's row count (a
    table, its Adagrad accumulator or Adam moment, or a row-wise accumulator (rows,))."""
    by_path = {table_path(name): (name, shape[0]) for name, shape in tables.items()}

    def owner(path, leaf):
        keys = _path_keys(path)
        shape = getattr(leaf, "shape", ())
        for start in range(len(keys)):
            name, rows = by_path.get(keys[start:], (None, None))
            if name is not None and len(shape) >= 1 and shape[0] == rows:
                return name
        return ""

    return jax.tree_util.tree_map_with_path(owner, tree)


def _row_split(sharding: Any) -> tuple[Any, Any] | None:
    """``(mesh, spec)`` when ``sharding`` splits a leaf's rows over a mesh axis, else None."""
    spec = getattr(sharding, "spec", None)
    if spec is None or len(spec) == 0 or spec[0] is None:
        return None
    return sharding.mesh, spec


def _local_rows(shard: jax.Array, slots: jax.Array, axis: Any) -> jax.Array:
    """Row numbers of ``slots`` within this device's shard of rows; rows other devices own
    (and unused slots) point past the shard's end."""
    n = shard.shape[0]
    local = slots - jax.lax.axis_index(axis) * n
    return jnp.where((local >= 0) & (local < n), local, n)


def _sharded_gather(leaf: jax.Array, slots: jax.Array, mesh: Any, spec: Any) -> jax.Array:
    """Rows at ``slots`` of a leaf whose rows are split over ``spec[0]``: each device reads
    the rows it owns (zeros for the others) and a sum over the row axis assembles them, so
    only slot-sized arrays move, never the table."""
    axis = spec[0]

    def local(shard, slots):
        rows = shard.at[_local_rows(shard, slots, axis)].get(mode="fill", fill_value=0)
        return jax.lax.psum(rows, axis)

    rest = jax.P(*spec[1:])
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, jax.P()), out_specs=jax.P(None, *rest))(
        leaf, slots
    )


def _sharded_scatter(
    leaf: jax.Array, slots: jax.Array, rows: jax.Array, mesh: Any, spec: Any
) -> jax.Array:
    """``leaf`` with its rows at ``slots`` set to ``rows``: each device writes only the rows
    it owns, in place."""
    axis = spec[0]

    def local(shard, slots, rows):
        return shard.at[_local_rows(shard, slots, axis)].set(rows, mode="drop")

    rest = jax.P(*spec[1:])
    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, jax.P(), jax.P(None, *rest)), out_specs=spec
    )(leaf, slots, rows)


def gather_rows(
    tree: Any, owners: Any, slots: Mapping[str, jax.Array], shardings: Any = None
) -> Any:
    """The row view of ``tree``: each owned leaf's rows at its feature's slots (zeros in
    unused slots; bfloat16 rows as float32, so that the step's sums and updates of them are
    float32 and only the scatter rounds), other leaves as they are. With ``shardings`` (a
    tree like ``tree``), a leaf whose rows are split over a mesh axis is read with
    ``jax.shard_map``, each device gathering from its own rows."""
    if shardings is None:
        shardings = jax.tree.map(lambda _: None, owners)

    def one(leaf, owner, sharding):
        if not owner:
            return leaf
        split = _row_split(sharding)
        if split is not None:
            rows = _sharded_gather(leaf, slots[owner], *split)
        else:
            rows = jnp.asarray(leaf).at[slots[owner]].get(mode="fill", fill_value=0)
        if jnp.issubdtype(rows.dtype, jnp.floating):
            rows = rows.astype(jnp.promote_types(rows.dtype, jnp.float32))
        return rows

    return jax.tree.map(one, tree, owners, shardings, is_leaf=lambda x: x is None)


def scatter_rows(
    tree: Any, view: Any, owners: Any, slots: Mapping[str, jax.Array], shardings: Any = None
) -> Any:
    """``tree`` with each owned leaf's rows at its feature's slots replaced by the view's
    (unused slots dropped); other leaves taken from the view. ``shardings`` as in
    ``gather_rows``: each device writes the rows it owns."""
    if shardings is None:
        shardings = jax.tree.map(lambda _: None, owners)

    def one(leaf, new, owner, sharding):
        if not owner:
            return new
        new = new.astype(leaf.dtype)
        split = _row_split(sharding)
        if split is not None:
            return _sharded_scatter(leaf, slots[owner], new, *split)
        return jnp.asarray(leaf).at[slots[owner]].set(new, mode="drop")

    return jax.tree.map(one, tree, view, owners, shardings, is_leaf=lambda x: x is None)


def table_shapes(params: Any, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Each named feature's table shape in ``params`` (features without a table skipped)."""
    embedding = params.get("embedding", {})
    return {
        name: tuple(embedding[name][TABLE_KEY].shape)
        for name in names
        if isinstance(embedding.get(name), Mapping) and TABLE_KEY in embedding[name]
    }
