"""Sentence embeddings from a pretrained BERT-family model: tokenize, encode, mean-pool,
L2-normalise, as sentence-transformers does, in jitted JAX.

Length bucketing: texts are sorted by token count and each batch is padded only to the
smallest bucket length (16, 32, 64, ... up to the model's maximum) that holds its longest
text, and to a fixed batch size, so a corpus of short titles compiles a handful of shapes
and never pays for 256-token padding.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tokenizers
from safetensors.numpy import load_file

from mtl_jax.text.bert import BertConfig, BertEncoder, mean_pool_normalize, params_from_state_dict
from mtl_jax.text.weights import ModelFilesError, locate_model_dir

_MIN_BUCKET = 16


def bucket_length(longest: int, max_length: int) -> int:
    """The smallest power of two >= ``longest`` (at least 16), capped at ``max_length``."""
    length = _MIN_BUCKET
    while length < longest:
        length *= 2
    return min(length, max_length)


class TextEncoder:
    """A pretrained sentence encoder loaded from a Hugging Face model directory."""

    def __init__(self, model_dir: str | os.PathLike | None = None):
        directory = locate_model_dir(model_dir)
        self.model_dir = directory
        self.config = BertConfig.from_json(directory / "config.json")
        st_config = directory / "sentence_bert_config.json"
        self.max_length = min(
            json.loads(st_config.read_text()).get("max_seq_length", 512)
            if st_config.exists()
            else 512,
            self.config.max_position_embeddings,
        )
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
            state = load_file(str(directory / "model.safetensors"))
        except Exception as e:  # the libraries raise their own types for damaged files
            raise ModelFilesError(
                f"the text model in {directory} does not load ({type(e).__name__}: {e}); "
                "delete the directory to fetch it again, or point config.text.model_dir at "
                "a good copy"
            ) from e
        # The packaged tokenizer.json pads and truncates to 128; sentence-transformers
        # truncates to max_seq_length and pads per batch, which we do ourselves.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.params = jax.device_put(params_from_state_dict(state, self.config))
        self.module = BertEncoder(self.config)
        self.dim = self.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS]/[SEP], truncated to ``max_length``."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def pad(self, ids: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both (len(ids), length) int32, zero-padded."""
        input_ids = np.zeros((len(ids), length), np.int32)
        mask = np.zeros((len(ids), length), np.int32)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return input_ids, mask

    @functools.cached_property
    def _embed(self):
        def embed(params: Any, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
            hidden = self.module.apply({"params": params}, input_ids, mask)
            return mean_pool_normalize(hidden, mask)

        return jax.jit(embed)

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embeddings of already tokenized, padded rows (one compiled shape per input shape)."""
        return np.asarray(self._embed(self.params, input_ids, attention_mask))

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised, in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self.tokenize(texts)
        order = np.argsort([len(row) for row in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [ids[i] for i in chunk]
            length = bucket_length(max(len(r) for r in rows), self.max_length)
            input_ids, mask = self.pad(rows + [[]] * (batch_size - len(rows)), length)
            out[chunk] = self.embed_padded(input_ids, mask)[: len(rows)]
        return out


@functools.cache
def default_encoder(model_dir: str | None = None) -> TextEncoder:
    """One loaded encoder per model directory, shared by every caller in the process."""
    return TextEncoder(model_dir)


def encode(
    texts: Sequence[str], batch_size: int = 64, model_dir: str | pathlib.Path | None = None
) -> np.ndarray:
    """Sentence embeddings (N, 384 for the default all-MiniLM-L6-v2), float32, L2-normalised."""
    return default_encoder(str(model_dir) if model_dir else None).encode(texts, batch_size)
