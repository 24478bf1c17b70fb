"""Throughput of the jitted text encoder (sentences/s) on MovieLens-100K's item and user
texts, next to sentence-transformers (the original, PyTorch) on the same texts and threads.

  python experiments/bench_text.py --batch_size=64
  python experiments/bench_text.py --batch_size=64 --reference_python=/path/to/venv/bin/python

Measures ``mtl_jax.text.encode`` with packing (the default: texts laid end to end in rows,
each attending to itself only) and with length bucketing (texts sorted by length, each
batch padded to the smallest of 16/32/64/... tokens that fits), after a warm-up pass that
compiles every shape; ``--padded_256`` adds every batch padded to the model's 256-token
maximum. The reference runs in ``--reference_python`` (default: this interpreter, when it
has sentence-transformers, e.g. ``pip install -e '.[reference]'``; none: skipped) through
experiments/text_reference.py, which also reports the two models' smallest cosine on the
corpus. Prints a table and JSON lines, and appends them to
experiments/results/text_encoder.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl import app, flags

from mtl_jax import benchmark, reporting
from mtl_jax.data import movielens
from mtl_jax.text import default_encoder

_BATCH = flags.DEFINE_integer("batch_size", 64, "Sentences per batch (both encoders).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes; the median is reported.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Texts per corpus (0: all); the smoke test's knob.")
_PADDED = flags.DEFINE_bool("padded_256", False, "Also time padding to 256 tokens (slow).")
_REFERENCE = flags.DEFINE_string(
    "reference_python",
    "",
    "Python interpreter with sentence-transformers for the reference; '' = this one if it "
    "has it, else no reference; 'none' = no reference.",
)
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "text_encoder.jsonl"), "JSONL to append."
)


def corpora(limit: int) -> dict[str, list[str]]:
    ml = movielens.load(movielens.fetch())
    texts = {
        "movielens items (title, year, genres)": [
            movielens.item_text(ml, i, with_genres=True) for i in sorted(ml.item_title)
        ],
        "movielens users": [movielens.user_text(ml, u) for u in sorted(ml.user_age)],
    }
    return {name: t[:limit] for name, t in texts.items()} if limit else texts


def reference_python() -> str | None:
    if _REFERENCE.value == "none":
        return None
    if _REFERENCE.value:
        return _REFERENCE.value
    return sys.executable if importlib.util.find_spec("sentence_transformers") else None


def run_reference(python: str, model_dir: pathlib.Path, texts: dict, ours: dict) -> dict:
    """{corpus: the reference's JSON line}, from a subprocess in ``python``."""
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = pathlib.Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        compare = pathlib.Path(tmp) / "ours.npz"
        np.savez(compare, **ours)
        out = subprocess.run(
            [
                python,
                str(pathlib.Path(__file__).parent / "text_reference.py"),
                f"--model_dir={model_dir}",
                f"--texts={texts_file}",
                f"--batch_size={_BATCH.value}",
                f"--repeats={_REPEATS.value}",
                f"--compare={compare}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"the reference failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {row.pop("corpus"): row for row in rows}


def main(argv):
    del argv
    texts = corpora(_LIMIT.value)
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

    def padded_256(corpus):
        ids = encoder.tokenize(corpus)
        for start in range(0, len(ids), batch):
            rows = ids[start : start + batch]
            rows = rows + [[]] * (batch - len(rows))
            encoder.embed_padded(*encoder.pad(rows, encoder.max_length))

    rows, ours = [], {}
    for name, corpus in texts.items():
        ids = encoder.tokenize(corpus)
        ours[name] = encoder.encode(corpus, batch_size=batch)
        unpacked = encoder.encode(corpus, batch_size=batch, packing=False)
        timers = {
            "packed": lambda c=corpus: encoder.encode(c, batch_size=batch),
            "bucketed": lambda c=corpus: encoder.encode(c, batch_size=batch, packing=False),
        }
        if _PADDED.value:
            timers["padded_256"] = lambda c=corpus: padded_256(c)
        seconds = benchmark.interleaved_median_seconds(timers, _REPEATS.value)
        row = {
            **common,
            "corpus": name,
            "sentences": len(corpus),
            "mean_tokens": float(np.mean([len(r) for r in ids])),
            **{f"{k}_sentences_per_s": len(corpus) / s for k, s in seconds.items()},
            "packed_vs_bucketed_max_abs_diff": float(np.abs(ours[name] - unpacked).max()),
        }
        rows.append(row)
    python = reference_python()
    if python:
        reference = run_reference(python, encoder.model_dir, texts, ours)
        for row in rows:
            ref = reference[row["corpus"]]
            row.update(ref)
            row["packed_vs_reference"] = (
                row["packed_sentences_per_s"] / ref["reference_sentences_per_s"]
            )
    print(f"{'corpus':<40} {'n':>5} {'tokens':>6} {'packed/s':>9} {'bucketed/s':>11} {'orig/s':>7}")
    for row in rows:
        ref = row.get("reference_sentences_per_s")
        print(
            f"{row['corpus']:<40} {row['sentences']:>5} {row['mean_tokens']:>6.1f} "
            f"{row['packed_sentences_per_s']:>9.0f} {row['bucketed_sentences_per_s']:>11.0f} "
            f"{(f'{ref:.0f}' if ref else '-'):>7}"
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
