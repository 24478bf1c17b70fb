"""Sentence embeddings of a dataset's item and user texts, computed once and cached on disk.

The cache key is the model's files (config, tokenizer, weights: their sha256) and the texts
themselves, so a changed template, dataset or model never reuses stale vectors. Files are
written to a temporary name and renamed, so a killed run never leaves a partial cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from mtl_jax.text.bert import BertConfig
from mtl_jax.text.encoder import default_encoder
from mtl_jax.text.weights import locate_model_dir

log = logging.getLogger("mtl_jax")


def cache_dir() -> pathlib.Path:
    root = pathlib.Path(os.environ.get("MTL_JAX_DATA", "~/.cache/mtl_jax")).expanduser()
    return root / "text_features"


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


def embedding_dim(model_dir: str = "") -> int:
    """Width of the model's sentence embeddings (its hidden size)."""
    directory = locate_model_dir(model_dir or None)
    return BertConfig.from_json(directory / "config.json").hidden_size


def text_embeddings(
    texts: Sequence[str], model_dir: str = "", batch_size: int = 64
) -> np.ndarray:
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
