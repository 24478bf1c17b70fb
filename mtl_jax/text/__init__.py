"""Pretrained language models: a BERT-family sentence encoder (text features) and Llama /
Qwen2 decoders, in Flax."""

from mtl_jax.text.decoder import DecoderConfig, DecoderLM, decoder_hidden_states
from mtl_jax.text.encoder import TextEncoder, default_encoder, encode
from mtl_jax.text.weights import ModelFilesError, locate_model_dir

__all__ = [
    "DecoderConfig",
    "DecoderLM",
    "ModelFilesError",
    "TextEncoder",
    "decoder_hidden_states",
    "default_encoder",
    "encode",
    "locate_model_dir",
]
