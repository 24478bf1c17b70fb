"""Serving latency and throughput: in process, over HTTP on loopback, and ranking.

  python experiments/bench_serving.py                      # trains and exports a model first
  python experiments/bench_serving.py --model=models/ecommerce --requests=10000

Without ``--model``, an e-commerce ``:smoke`` model with a 2,000-item catalogue is trained
and exported in a temporary directory. Then:

- ``inprocess``: ``Scorer.score`` on ``--batches`` raw rows (encoding included), timed
  call by call;
- ``rank``: ``Scorer.rank`` of ``--candidates`` catalogue items for one user (k=10), with
  and without MMR diversity;
- ``http``: ``serve.py http`` in its own process; for each of ``--clients`` concurrent
  clients (threads, one keep-alive connection each) /score requests of one row, up to
  ``--requests`` requests or ``--max_seconds`` seconds in all per setting.

One JSON line per measurement (keys ``mode``, ``batch``, ``clients``, ``requests``,
``errors``, ``p50_ms``, ``p99_ms``, and ``requests_per_s`` for HTTP) on stdout, appended to
``--out``.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_MODEL = flags.DEFINE_string("model", None, "An export directory (default: train one).")
_BATCHES = flags.DEFINE_list("batches", ["1", "64", "1024"], "In-process batch sizes.")
_CALLS = flags.DEFINE_integer("calls", 500, "Timed in-process calls per batch size (at most).")
_CANDIDATES = flags.DEFINE_integer("candidates", 1000, "Candidates per rank call.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "32"], "Concurrent HTTP clients.")
_REQUESTS = flags.DEFINE_integer("requests", 10_000, "HTTP requests per client setting.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 120.0, "Time bound per measurement.")
_OUT = flags.DEFINE_string(
    "out", str(ROOT / "experiments" / "results" / "serving.jsonl"), "JSONL to append to."
)


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}  # fmt: skip


def _train_and_export(directory: pathlib.Path) -> pathlib.Path:
    from configs import ecommerce
    from mtl_jax.serving import export_workdir
    from mtl_jax.train import train_and_evaluate

    config = ecommerce.get_config("smoke")
    with config.unlocked():
        config.data.num_items = 2000
    train_and_evaluate(config, str(directory / "run"))
    return export_workdir(directory / "run", directory / "model")


def _random_rows(scorer, n: int, rng: np.random.Generator) -> list[dict]:
    """Valid raw rows of a built-in dataset's export (ids uniform over each table)."""
    out = []
    for _ in range(n):
        row = {}
        for spec in scorer.rows.encoders.values():
            if spec["kind"] != "id":
                raise SystemExit("random rows are drawn for built-in datasets' exports only")
            row[spec["column"]] = int(rng.integers(spec["encoder"]["rows"]))
        out.append(row)
    return out


def _timed(call, calls: int) -> list[float]:
    call()  # compile this size
    ms, start = [], time.perf_counter()
    while len(ms) < calls and time.perf_counter() - start < _MAX_SECONDS.value:
        t = time.perf_counter()
        call()
        ms.append(1e3 * (time.perf_counter() - t))
    return ms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_clients(port: int, clients: int, rows: list[dict], total: int) -> dict:
    body = [json.dumps({"rows": [row]}).encode() for row in rows]
    per_client = -(-total // clients)
    deadline = time.perf_counter() + _MAX_SECONDS.value

    def client(c: int) -> tuple[list[float], int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        ms, errors = [], 0
        for i in range(per_client):
            if time.perf_counter() > deadline:
                break
            t = time.perf_counter()
            try:
                conn.request("POST", "/score", body[(c * per_client + i) % len(body)],
                             {"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                response.read()
                errors += response.status != 200
            except OSError:
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ms.append(1e3 * (time.perf_counter() - t))
        conn.close()
        return ms, errors

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    ms = [m for r in results for m in r[0]]
    return {"requests": len(ms), "errors": sum(r[1] for r in results),
            "requests_per_s": len(ms) / wall, **_percentiles(ms)}  # fmt: skip


def _serve(model: pathlib.Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "serve.py", "http", f"--model={model}", f"--port={port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up")


def main(argv):
    del argv
    import jax

    from mtl_jax import reporting
    from mtl_jax.serving import Scorer

    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = pathlib.Path(_MODEL.value) if _MODEL.value else _train_and_export(pathlib.Path(tmp))
        scorer = Scorer.load(model)
        header = {
            "benchmark": "serving", "dataset": scorer.manifest["dataset"],
            "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
            "commit": reporting.git_commit(),
        }  # fmt: skip

        def emit(record: dict) -> None:
            line = json.dumps({**header, **record})
            print(line, flush=True)
            with out.open("a") as f:
                f.write(line + "\n")

        rng = np.random.default_rng(0)
        rows = _random_rows(scorer, max(map(int, _BATCHES.value)), rng)
        for batch in map(int, _BATCHES.value):
            ms = _timed(lambda b=batch: scorer.score(rows[:b]), _CALLS.value)
            emit({"mode": "inprocess", "batch": batch, "clients": 0, "requests": len(ms),
                  "errors": 0, **_percentiles(ms)})  # fmt: skip
        if scorer.catalogue:
            items = scorer.catalogue_items
            n = min(_CANDIDATES.value, len(items))
            candidates = rng.choice(items, n, replace=False).tolist()
            context = {k: rows[0][k] for k in scorer.context_features}
            for diversity in (None, {"lambda": 0.7}):
                call = lambda d=diversity: scorer.rank(context, candidates, 10, diversity=d)
                ms = _timed(call, min(_CALLS.value, 200))
                emit({"mode": "rank", "batch": n, "clients": 0, "requests": len(ms), "errors": 0,
                      "diversity": diversity, **_percentiles(ms)})  # fmt: skip
        proc, port = _serve(model)
        try:
            for clients in map(int, _CLIENTS.value):
                _http_clients(port, clients, rows, 4 * clients)  # warm: connections, buckets
                emit({"mode": "http", "batch": 1, "clients": clients,
                      **_http_clients(port, clients, rows, _REQUESTS.value)})  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    app.run(main)
