"""Flax modules: feature embeddings, shared trunks and task towers."""

from mtl_jax.models.model import MultiTaskModel, Tower
from mtl_jax.models.trunks import TRUNKS, MMoE, SharedBottom

__all__ = ["TRUNKS", "MMoE", "MultiTaskModel", "SharedBottom", "Tower"]
