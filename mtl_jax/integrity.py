"""Checkpoint integrity: content fingerprints, and the structure a checkpoint was saved with.

A fingerprint is one uint32 per array, ``sum_i bits(x_i) * (2i + 1) mod 2^32``, computed on
the device at save time and stored in the checkpoint's JSON ``meta`` (so it is committed
atomically with the arrays). Any single flipped bit changes its array's fingerprint (the
multipliers are odd, so invertible mod 2^32), and so does swapping two different values.
At restore the fingerprint of what came back is compared with the recorded one: flipped
bytes that still decode are called damage instead of being trained on.

``structure_differences`` compares the parameter paths, shapes and dtypes of a checkpoint
with those the current code expects, so a checkpoint written by different code is reported
as such (naming the paths) rather than mistaken for damage.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_UINT_OF_WIDTH = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def path_name(path: tuple) -> str:
    """``params/trunk/kernel`` for a pytree key path (dict keys, attributes, indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize == 8:  # no 64-bit values without jax_enable_x64; fold both halves
        x = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = jax.lax.bitcast_convert_type(x, _UINT_OF_WIDTH[x.dtype.itemsize]).astype(jnp.uint32)
    position = jax.lax.iota(jnp.uint32, bits.size).reshape(bits.shape)
    return jnp.sum(bits * (2 * position + 1), dtype=jnp.uint32)


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> list[jax.Array]:
    return [_leaf_fingerprint(x) for x in leaves]


def fingerprint(tree: Any) -> dict[str, int]:
    """``{path: uint32 fingerprint}`` of every array leaf of ``tree`` (on its devices)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [path_name(p) for p, _ in flat]
    values = jax.device_get(_fingerprints([jnp.asarray(x) for _, x in flat]))
    return {n: int(v) for n, v in zip(names, values, strict=True)}


def fingerprint_mismatches(recorded: dict[str, int], tree: Any) -> list[str]:
    """Paths whose fingerprint differs from ``recorded`` (or that only one side has)."""
    now = fingerprint(tree)
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))


def _signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        path_name(p): (tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
        for p, leaf in flat
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    }


def structure_differences(saved: Any, expected: Any) -> list[str]:
    """Human-readable differences between two trees of array metadata (anything with
    ``shape`` and ``dtype``: Orbax's ArrayMetadata, ShapeDtypeStruct, arrays); empty when
    paths, shapes and dtypes agree."""
    a, b = _signature(saved), _signature(expected)
    out = [f"{k}: only in the checkpoint" for k in sorted(set(a) - set(b))]
    out += [f"{k}: not in the checkpoint" for k in sorted(set(b) - set(a))]
    out += [
        f"{k}: checkpoint {a[k][0]} {a[k][1]}, this code {b[k][0]} {b[k][1]}"
        for k in sorted(set(a) & set(b))
        if a[k] != b[k]
    ]
    return out
