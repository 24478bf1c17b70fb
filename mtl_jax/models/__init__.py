"""Flax modules: feature embeddings, shared trunks and task towers."""

from mtl_jax.models.model import MultiTaskModel, Tower
from mtl_jax.models.trunks import (
    PLE,
    TRUNKS,
    CGCLevel,
    CrossStitch,
    MMoE,
    OMoE,
    SharedBottom,
    SingleTask,
)

__all__ = [
    "PLE",
    "TRUNKS",
    "CGCLevel",
    "CrossStitch",
    "MMoE",
    "MultiTaskModel",
    "OMoE",
    "SharedBottom",
    "SingleTask",
    "Tower",
]
