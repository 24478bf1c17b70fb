"""Throughput of the jitted text encoder (sentences/s) on MovieLens-100K's item and user texts.

  python experiments/bench_text.py --batch_size=64

Measures ``mtl_jax.text.encode`` with length bucketing (texts sorted by length, each batch
padded to the smallest of 16/32/64/... tokens that fits) against the same texts padded to
the model's 256-token maximum, after a warm-up pass that compiles every shape. Prints a
table and appends JSON lines to experiments/results/text_encoder.jsonl.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from mtl_jax import benchmark, reporting
from mtl_jax.data import movielens
from mtl_jax.text import default_encoder

_BATCH = flags.DEFINE_integer("batch_size", 64, "Sentences per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes; the median is reported.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Texts per corpus (0: all); the smoke test's knob.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "text_encoder.jsonl"), "JSONL to append."
)


def main(argv):
    del argv
    ml = movielens.load(movielens.fetch())
    corpora = {
        "movielens items (title, year, genres)": [
            movielens.item_text(ml, i, with_genres=True) for i in sorted(ml.item_title)
        ],
        "movielens users": [movielens.user_text(ml, u) for u in sorted(ml.user_age)],
    }
    if _LIMIT.value:
        corpora = {name: texts[: _LIMIT.value] for name, texts in corpora.items()}
    encoder = default_encoder()
    batch = _BATCH.value
    common = {
        "benchmark": "text_encoder",
        "model": str(encoder.model_dir.name),
        "batch_size": batch,
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "commit": reporting.git_commit(),
    }

    def fixed_length(texts):
        ids = encoder.tokenize(texts)
        for start in range(0, len(ids), batch):
            rows = ids[start : start + batch]
            rows = rows + [[]] * (batch - len(rows))
            encoder.embed_padded(*encoder.pad(rows, encoder.max_length))

    rows = []
    print(f"{'corpus':<40} {'n':>5} {'tokens':>6} {'bucketed/s':>11} {'padded-256/s':>13}")
    for name, texts in corpora.items():
        tokens = float(np.mean([len(r) for r in encoder.tokenize(texts)]))
        bucketed = benchmark.median_seconds(
            lambda t=texts: encoder.encode(t, batch_size=batch), _REPEATS.value
        )
        padded = benchmark.median_seconds(lambda t=texts: fixed_length(t), _REPEATS.value)
        row = {
            **common,
            "corpus": name,
            "sentences": len(texts),
            "mean_tokens": tokens,
            "bucketed_sentences_per_s": len(texts) / bucketed,
            "padded_256_sentences_per_s": len(texts) / padded,
        }
        rows.append(row)
        print(
            f"{name:<40} {len(texts):>5} {tokens:>6.1f} {row['bucketed_sentences_per_s']:>11.0f} "
            f"{row['padded_256_sentences_per_s']:>13.0f}"
        )
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
