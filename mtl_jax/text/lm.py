"""The language model of an LM trunk (``model.trunk="llm"``): which one, its tokenizer and
its pretrained weights.

Sources: a Hugging Face directory in ``text.model_dir`` (a BERT encoder such as the default
all-MiniLM-L6-v2, or a Llama / Qwen2 decoder: ``config.json``, safetensors, ``tokenizer.json``),
or ``llm.preset``, a named shape with randomly initialised weights and a byte-level tokenizer
(tests, and sizing a mesh for a real model's shape without its files).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.text.bert import BertConfig, params_from_state_dict
from mtl_jax.text.decoder import MODEL_TYPES, DecoderConfig, DecoderFilesError, load_params
from mtl_jax.text.weights import locate_model_dir

# Shapes of Qwen/Qwen2.5-{0.5B,1.5B}/config.json, and tiny ones for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(
        model_type="llama", vocab_size=260, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512,
        attention_bias=False,
    ),
    "tiny-qwen2": dict(
        model_type="qwen2", vocab_size=260, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=512,
        attention_bias=True, tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
        attention_bias=True, tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=131072,
        attention_bias=True, tie_word_embeddings=True,
    ),
}  # fmt: skip


class ByteTokenizer:
    """UTF-8 bytes as tokens (id = byte + 3; 0 pad, 1 begin, 2 end): the tokenizer of the
    presets, whose random weights no real tokenizer was trained for."""

    vocab_size = 259
    prefix: tuple[int, ...] = (1,)
    suffix: tuple[int, ...] = ()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [[b + 3 for b in text.encode("utf-8")] for text in texts]


class HFTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library; pieces are encoded without
    special tokens, and the model's own (BERT's [CLS] ... [SEP], Llama's begin token) are
    put around the whole prompt."""

    def __init__(
        self, path: pathlib.Path, prefix: Sequence[int | str], suffix: Sequence[int | str]
    ):
        """``prefix`` / ``suffix``: special tokens around each prompt, as ids or as tokens
        (looked up; one the vocabulary lacks is left out)."""
        import tokenizers

        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises its own types for damaged files
            raise DecoderFilesError(f"{path} does not load ({type(e).__name__}: {e})") from e
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.prefix, self.suffix = self._ids(prefix), self._ids(suffix)

    def _ids(self, tokens: Sequence[int | str]) -> tuple[int, ...]:
        ids = [t if isinstance(t, int) else self._tokenizer.token_to_id(t) for t in tokens]
        return tuple(i for i in ids if i is not None)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encoded]


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """The trunk's language model: ``config`` is a ``BertConfig`` (bidirectional encoder) or
    a ``DecoderConfig``; ``model_dir`` None for a preset (random weights)."""

    config: BertConfig | DecoderConfig
    model_dir: pathlib.Path | None = None
    preset: str = ""

    @property
    def is_encoder(self) -> bool:
        return isinstance(self.config, BertConfig)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    @functools.cached_property
    def tokenizer(self) -> ByteTokenizer | HFTokenizer:
        if self.model_dir is None:
            tokenizer: Any = ByteTokenizer()
        else:
            path = self.model_dir / "tokenizer.json"
            if not path.is_file():
                raise DecoderFilesError(f"{self.model_dir}: no tokenizer.json (the LM trunk's)")
            if self.is_encoder:  # [CLS] prompt [SEP]
                tokenizer = HFTokenizer(path, ("[CLS]",), ("[SEP]",))
            else:  # Llama's begin token; Qwen2 has none
                raw = json.loads((self.model_dir / "config.json").read_text())
                bos = raw.get("bos_token_id") if self.config.model_type == "llama" else None
                tokenizer = HFTokenizer(path, () if bos is None else (bos,), ())
        rows = self.config.vocab_size
        if tokenizer.vocab_size > rows:
            raise UserError(
                f"the LM trunk's tokenizer has {tokenizer.vocab_size} tokens but the model's "
                f"embedding table {rows} rows ({self.model_dir or 'preset ' + self.preset}): "
                "the tokenizer belongs to another model"
            )
        return tokenizer

    def pretrained_params(self, dtype: Any = np.float32) -> dict[str, Any] | None:
        """The base weights as the backbone module's parameters (None for a preset)."""
        if self.model_dir is None:
            return None
        if not self.is_encoder:
            params = load_params(self.model_dir, self.config, dtype)
            params.pop("lm_head", None)  # the trunk reads hidden states, not next tokens
            return params
        from safetensors.numpy import load_file

        state = load_file(str(self.model_dir / "model.safetensors"))
        return params_from_state_dict(state, self.config)


def language_model(model_dir: str, preset: str) -> LanguageModel:
    """The LM a config names: ``preset`` if set, else the directory (``''``: the default
    sentence encoder, fetched as text features fetch it)."""
    if preset:
        if preset not in PRESETS:
            raise UserError(f"llm.preset {preset!r} is unknown; valid: {sorted(PRESETS)}")
        return LanguageModel(DecoderConfig(**PRESETS[preset]), None, preset)
    return _from_directory(model_dir)


@functools.cache
def _from_directory(model_dir: str) -> LanguageModel:
    if not model_dir:
        directory = locate_model_dir(None)
        return LanguageModel(BertConfig.from_json(directory / "config.json"), directory)
    directory = pathlib.Path(model_dir).expanduser()
    path = directory / "config.json"
    if not path.is_file():
        raise DecoderFilesError(f"{directory}: no config.json (a Hugging Face model directory)")
    kind = json.loads(path.read_text()).get("model_type")
    if kind == "bert":
        directory = locate_model_dir(directory)  # checks the encoder's files
        return LanguageModel(BertConfig.from_json(path), directory)
    if kind not in MODEL_TYPES:
        raise DecoderFilesError(
            f"{path}: model_type {kind!r} is not supported as an LM trunk; supported: "
            f"{['bert', *MODEL_TYPES]}"
        )
    return LanguageModel(DecoderConfig.from_json(path), directory)
