"""Sentence embeddings of a dataset's item and user texts, computed once and cached on disk.

The cache key is the model's files (config, tokenizer, weights: their sha256) and the texts
themselves, so a changed template, dataset or model never reuses stale vectors. Files are
written to a temporary name and renamed, so a killed run never leaves a partial cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtl_jax import paths
from mtl_jax.data.schema import MultiTaskDataset
from mtl_jax.text.bert import BertConfig
from mtl_jax.text.encoder import bucket_length, default_encoder
from mtl_jax.text.weights import locate_model_dir

log = logging.getLogger("mtl_jax")


def cache_dir() -> pathlib.Path:
    return paths.cache_root() / "text_features"


@functools.cache
def model_key(model_dir: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        with (model_dir / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def texts_key(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    return digest.hexdigest()[:16]


def text_embeddings(texts: Sequence[str], model_dir: str = "", batch_size: int = 64) -> np.ndarray:
    """(len(texts), dim) float32 sentence embeddings, from the disk cache when present."""
    directory = locate_model_dir(model_dir or None)
    path = cache_dir() / f"{model_key(directory)}-{texts_key(texts)}.npy"
    if path.exists():
        try:
            table = np.load(path)
            if table.shape[0] == len(texts):
                return table
        except (OSError, ValueError):
            pass
        log.warning("text-feature cache %s is unreadable; recomputing", path)
    start = time.perf_counter()
    encoder = default_encoder(str(directory))
    table = encoder.encode(list(texts), batch_size=batch_size)
    log.info(
        "encoded %d texts with %s in %.1fs; cached in %s",
        len(texts), directory.name, time.perf_counter() - start, path,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, table)
    os.replace(tmp.name, path)
    return table


@dataclasses.dataclass(frozen=True)
class TextSetup:
    """What the model needs to know about the configured text features before init."""

    dim: int = 384  # sentence-embedding width
    bert_config: BertConfig | None = None  # fine-tune mode only
    token_length: int = 0  # fine-tune mode: padded tokens per text
    trainable_layers: frozenset[str] = frozenset()  # fine-tune mode: encoder layer names
    model_dir: pathlib.Path | None = None
    # Fine-tune mode: each text feature's token ids, (ids, token_length), tokenised once.
    token_tables: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def from_config(cls, text_config: Any, dataset: MultiTaskDataset) -> TextSetup:
        if not text_config.features:
            return cls()
        directory = locate_model_dir(text_config.model_dir or None)
        bert = BertConfig.from_json(directory / "config.json")
        if text_config.mode == "frozen":
            return cls(dim=bert.hidden_size, model_dir=directory)
        layers = text_config.finetune_layers
        if layers > bert.num_hidden_layers:
            raise ValueError(
                f"text.finetune_layers={layers} but the encoder has {bert.num_hidden_layers}"
            )
        encoder = default_encoder(str(directory))
        tokens = {name: encoder.tokenize(dataset.text_for(name)) for name in text_config.features}
        longest = max(len(ids) for rows in tokens.values() for ids in rows)
        length = bucket_length(longest, encoder.max_length)
        return cls(
            dim=bert.hidden_size,
            bert_config=bert,
            token_length=length,
            trainable_layers=frozenset(
                f"layer_{i}" for i in range(bert.num_hidden_layers - layers, bert.num_hidden_layers)
            ),
            model_dir=directory,
            token_tables={name: encoder.pad(rows, length)[0] for name, rows in tokens.items()},
        )

    def pretrained_params(self, text_config: Any, dataset: MultiTaskDataset) -> dict[str, Any]:
        """``{embedding param name: value}`` to place into freshly initialised parameters."""
        if self.bert_config is None:
            return {
                f"text_table_{name}": text_embeddings(
                    dataset.text_for(name), text_config.model_dir, text_config.encode_batch_size
                )
                for name in text_config.features
            }
        out: dict[str, Any] = {
            f"text_tokens_{name}": ids.astype(np.float32)  # exact below 2**24
            for name, ids in self.token_tables.items()
        }
        out["text_encoder"] = default_encoder(str(self.model_dir)).params
        return out
