"""Use a trained model: export it, then score rows with the export.

  python serve.py export --workdir=runs/ecommerce --out=models/ecommerce
  python serve.py score --model=models/ecommerce --input=rows.jsonl --output=scores.jsonl
  python serve.py rank --model=models/ecommerce --input=requests.jsonl --output=ranked.jsonl
  python serve.py http --model=models/ecommerce --port=8080

``export`` writes a self-contained directory (mtl_jax/serving/export.py) from a run's best
checkpoint; ``score`` reads one JSON object per line (raw feature values, as in the
training data) and writes one per line: ``{task: prediction}``, a probability, a value or a
list of class/label probabilities; ``rank`` reads one request per line (``{"context": {...},
"candidates": [...], "k": 10, "fusion": {...}, "diversity": {...}}``, as /rank takes) and
writes the ranked items; ``http`` serves /health, /score and /rank
(mtl_jax/serving/http.py; ``pip install -e '.[serve]'``). Bad input ends with one line
naming the problem (the file and line for rows) and exit status 2.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

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
_HOST = flags.DEFINE_string("host", "127.0.0.1", "http: address to bind (loopback by default).")
_PORT = flags.DEFINE_integer("port", 8080, "http: port.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 1024, "http: rows per batched model call.")
_MAX_WAIT = flags.DEFINE_float(
    "max_wait_ms", 0.0, "http: how long a model call waits for more requests (0: no wait)."
)
_MAX_ROWS = flags.DEFINE_integer("max_rows", 1024, "http: rows of one /score request.")
_MAX_CANDIDATES = flags.DEFINE_integer("max_candidates", 10_000, "http: candidates per /rank.")

COMMANDS = ("export", "score", "rank", "http")


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


def _file_job(lines: Callable[[Any, list[dict]], Iterator[str]], what: str) -> None:
    """Loads --model, reads --input's JSON lines, writes ``lines(scorer, records)`` to
    --output (under a temporary name until complete)."""
    from mtl_jax.serving import Scorer

    _require(model=_MODEL.value, input=_INPUT.value, output=_OUTPUT.value)
    scorer = Scorer.load(_MODEL.value)
    records = _read_rows(pathlib.Path(_INPUT.value))
    out = pathlib.Path(_OUTPUT.value)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w") as f:
        for line in lines(scorer, records):
            f.write(line + "\n")
    tmp.replace(out)
    print(f"{what} {len(records)} lines of {_INPUT.value} into {out}")


def _scores(scorer: Any, rows: list[dict]) -> Iterator[str]:
    from mtl_jax.serving import RequestError

    for start in range(0, len(rows), _BATCH.value):
        try:
            predictions = scorer.score(rows[start : start + _BATCH.value])
        except RequestError as e:  # "row i" of the batch -> the line of the file
            raise UserError(f"{_INPUT.value} (rows from line {start + 1}): {e}") from None
        for i in range(len(next(iter(predictions.values())))):
            yield json.dumps({k: v[i].tolist() for k, v in predictions.items()})


def _rankings(scorer: Any, requests: list[dict]) -> Iterator[str]:
    from mtl_jax.serving import RequestError

    keys = ("context", "candidates", "k", "fusion", "diversity")
    for number, request in enumerate(requests, 1):
        unknown = sorted(set(request) - set(keys)) if isinstance(request, dict) else None
        if unknown is None or unknown:
            raise UserError(f"{_INPUT.value}: request {number}: keys must be among {keys}")
        try:
            yield json.dumps({"items": scorer.rank(**request)})
        except (RequestError, TypeError) as e:
            raise UserError(f"{_INPUT.value}: request {number}: {e}") from None


def score() -> None:
    _file_job(_scores, "scored")


def rank() -> None:
    _file_job(_rankings, "ranked")


def http() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from mtl_jax.serving.http import ServerConfig, serve
    except ImportError as e:
        raise UserError(
            f"serving over HTTP needs the serve extra ({e}): pip install -e '.[serve]'"
        ) from None
    _require(model=_MODEL.value)
    config = ServerConfig(
        host=_HOST.value, port=_PORT.value, max_batch=_MAX_BATCH.value,
        max_wait_ms=_MAX_WAIT.value, max_rows=_MAX_ROWS.value,
        max_candidates=_MAX_CANDIDATES.value,
    )  # fmt: skip
    print(f"serving {_MODEL.value} on http://{config.host}:{config.port}", flush=True)
    serve(_MODEL.value, config)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: serve.py {{{'|'.join(COMMANDS)}}} --flags...")
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        {"export": export, "score": score, "rank": rank, "http": http}[argv[1]]()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
