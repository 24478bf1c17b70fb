"""Use a trained model: export it, then score rows with the export.

  python serve.py export --workdir=runs/ecommerce --out=models/ecommerce
  python serve.py score --model=models/ecommerce --input=rows.jsonl --output=scores.jsonl

``export`` writes a self-contained directory (mtl_jax/serving/export.py) from a run's best
checkpoint; ``score`` reads one JSON object per line (raw feature values, as in the
training data) and writes one per line: ``{task: prediction}``, a probability, a value or a
list of class/label probabilities. Bad input ends with one line naming the problem (the
file and line for rows) and exit status 2.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging

from mtl_jax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "export: the run's workdir.")
_OUT = flags.DEFINE_string("out", None, "export: the directory to create.")
_PLATFORMS = flags.DEFINE_list(
    "platforms", None, "export: platforms to lower for (default: this machine's), e.g. cpu,cuda"
)
_MODEL = flags.DEFINE_string("model", None, "score: an export directory.")
_INPUT = flags.DEFINE_string("input", None, "score: JSON lines of raw rows.")
_OUTPUT = flags.DEFINE_string("output", None, "score: JSON lines of predictions to write.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "score: rows per call.")

COMMANDS = ("export", "score")


def _require(**values) -> None:
    missing = [f"--{k}" for k, v in values.items() if not v]
    if missing:
        raise UserError(f"missing {', '.join(missing)}")


def export() -> None:
    from mtl_jax.serving import export_workdir

    _require(workdir=_WORKDIR.value, out=_OUT.value)
    out = export_workdir(_WORKDIR.value, _OUT.value, platforms=_PLATFORMS.value)
    print(f"exported {_WORKDIR.value} to {out}")


def _read_rows(path: pathlib.Path) -> list[dict]:
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not a JSON object: {e.msg}") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def score() -> None:
    from mtl_jax.serving import RequestError, Scorer

    _require(model=_MODEL.value, input=_INPUT.value, output=_OUTPUT.value)
    scorer = Scorer.load(_MODEL.value)
    rows = _read_rows(pathlib.Path(_INPUT.value))
    out = pathlib.Path(_OUTPUT.value)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w") as f:
        for start in range(0, len(rows), _BATCH.value):
            try:
                predictions = scorer.score(rows[start : start + _BATCH.value])
            except RequestError as e:  # "row i" of the batch -> the line of the file
                raise UserError(f"{_INPUT.value} (rows from line {start + 1}): {e}") from None
            for i in range(len(next(iter(predictions.values())))):
                f.write(json.dumps({k: v[i].tolist() for k, v in predictions.items()}) + "\n")
    tmp.replace(out)
    print(f"scored {len(rows)} rows into {out}")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: serve.py {{{'|'.join(COMMANDS)}}} --flags...")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        {"export": export, "score": score}[argv[1]]()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
