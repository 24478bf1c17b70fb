"""Pretrained language-model text features: a BERT-family encoder in Flax."""

from mtl_jax.text.encoder import TextEncoder, default_encoder, encode
from mtl_jax.text.weights import ModelFilesError, locate_model_dir

__all__ = ["ModelFilesError", "TextEncoder", "default_encoder", "encode", "locate_model_dir"]
