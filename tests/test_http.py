"""The HTTP endpoint (serve.py http, mtl_jax/serving/http.py) over loopback: the same
answers as the in-process scorer, a 4xx naming the problem for each of 200+ malformed
requests, dynamic batching of concurrent requests, graceful shutdown on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from mtl_jax import parallel
from mtl_jax.data import load_dataset
from mtl_jax.serving import Scorer, export_trainer
from mtl_jax.train import Trainer
from tests.helpers import tiny_config

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONTEXT = {"user_id": 3, "age": 1, "gender": 0, "region": 2}
ITEM = {"item_id": 5, "brand": 1, "price": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port, path, body=None, method=None, raw=None, timeout=30):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, {"raw": text.decode(errors="replace")}


def _start(model, *flags):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "serve.py", "http", f"--model={model}", f"--port={port}", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-3000:])
        try:
            if _request(port, "/health", timeout=2)[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not come up")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    config = tiny_config()
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    out = tmp_path_factory.mktemp("http") / "model"
    export_trainer(trainer, trainer.init_state().params, out)
    return out


@pytest.fixture(scope="module")
def server(model):
    proc, port = _start(model, "--max_wait_ms=20", "--max_rows=64")
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def test_answers_equal_the_in_process_scorer(model, server):
    scorer = Scorer.load(model)
    rows = [{**CONTEXT, **ITEM, "item_id": i} for i in range(10)]
    status, body = _request(server, "/score", {"rows": rows})
    assert status == 200
    want = scorer.score(rows)
    for task in want:
        np.testing.assert_allclose([p[task] for p in body["predictions"]], want[task], atol=1e-6)
    request = {"context": CONTEXT, "candidates": list(range(40)), "k": 5,
               "diversity": {"lambda": 0.5}}  # fmt: skip
    status, body = _request(server, "/rank", request)
    assert status == 200
    assert [x["item"] for x in body["items"]] == [x["item"] for x in scorer.rank(**request)]
    status, health = _request(server, "/health")
    assert status == 200 and health["catalogue"] and "user_id" in health["features"]


def _malformed() -> list[tuple[str, str | None, bytes | None, object]]:
    """(path, method, raw body, JSON body): more than 200 requests that must each get a 4xx."""
    good_row = {**CONTEXT, **ITEM}
    cases: list = []
    raw = [b"", b"{", b"[1,", b"nul", b"\xff\xfe", b'{"rows": NaN}', b'{"rows": [Infinity]}',
           b'{"rows": [{"user_id": -Infinity}]}', b"[" * 100_000, b'"rows"', b"123", b"null",
           b'{"rows": [1, 2', b"{'rows': []}", b'{"rows": [] } trailing', b" " * 10]  # fmt: skip
    cases += [("/score", "POST", r, None) for r in raw]
    cases += [("/rank", "POST", r, None) for r in raw]
    cases.append(("/score", "POST", b'{"rows": [' + b'{"user_id": 1},' * 400_000 + b"{}]}", None))
    bad_values = [None, True, False, -1, 10**9, 1.5, "3", "x" * 1000, [], [1], {}, {"a": 1},
                  float("nan"), float("inf")]  # fmt: skip
    for feature in good_row:
        for value in bad_values:
            cases.append(("/score", "POST", None, {"rows": [{**good_row, feature: value}]}))
        missing = {k: v for k, v in good_row.items() if k != feature}
        cases.append(("/score", "POST", None, {"rows": [missing]}))
    for rows in (None, 1, "rows", {}, [], [1], [None], [[]], [good_row] * 65):
        cases.append(("/score", "POST", None, {"rows": rows}))
    cases += [("/score", "POST", None, {}), ("/score", "POST", None, {"rows": [good_row], "x": 1})]
    bid = {"weights": {"click": 1}, "times": "bid"}
    bad_rank = [
        {"candidates": [1]}, {"context": CONTEXT}, {"context": None, "candidates": [1]},
        {"context": CONTEXT, "candidates": []}, {"context": CONTEXT, "candidates": "1"},
        {"context": CONTEXT, "candidates": [999]}, {"context": CONTEXT, "candidates": [-1]},
        {"context": CONTEXT, "candidates": [1.5]}, {"context": CONTEXT, "candidates": [True]},
        {"context": CONTEXT, "candidates": [1, {"item_id": 1}]},
        {"context": CONTEXT, "candidates": list(range(80)) * 130},
        {"context": {"user_id": 1}, "candidates": [1]},
        {"context": CONTEXT, "candidates": [1], "k": 0},
        {"context": CONTEXT, "candidates": [1], "k": "2"},
        {"context": CONTEXT, "candidates": [1], "k": None},
        {"context": CONTEXT, "candidates": [1], "fusion": {"weights": {"clicks": 1}}},
        {"context": CONTEXT, "candidates": [1], "fusion": {"weights": {"category": 1}}},
        {"context": CONTEXT, "candidates": [1], "fusion": {"mode": "max", "weights": {"click": 1}}},
        {"context": CONTEXT, "candidates": [1], "fusion": {"weights": {"click": None}}},
        {"context": CONTEXT, "candidates": [1], "fusion": "click"},
        {"context": CONTEXT, "candidates": [1], "fusion": bid},
        {"context": CONTEXT, "candidates": [{"item_id": 1}]},
        {"context": CONTEXT, "candidates": [{**ITEM}], "fusion": bid},
        {"context": CONTEXT, "candidates": [1], "diversity": {"lambda": 2}},
        {"context": CONTEXT, "candidates": [1], "diversity": {"lambda": "0.5"}},
        {"context": CONTEXT, "candidates": [1], "diversity": {"attribute": "colour"}},
        {"context": CONTEXT, "candidates": [1], "diversity": [0.5]},
        {"context": CONTEXT, "candidates": [1], "extra": 1},
    ]  # fmt: skip
    cases += [("/rank", "POST", None, body) for body in bad_rank]
    for value in bad_values:
        cases.append(
            ("/rank", "POST", None, {"context": {**CONTEXT, "user_id": value}, "candidates": [1]})
        )
        if value != 10**9:  # a k beyond the candidates returns them all
            cases.append(
                ("/rank", "POST", None, {"context": CONTEXT, "candidates": [1], "k": value})
            )
    cases += [("/score", "GET", None, None), ("/rank", "GET", None, None),
              ("/health", "POST", b"{}", None), ("/nothing", "GET", None, None),
              ("/nothing", "POST", b"{}", None)]  # fmt: skip
    return cases


def test_malformed_requests_get_a_4xx_naming_the_problem(server):
    cases = _malformed()
    assert len(cases) >= 200
    for path, method, raw, body in cases:
        if raw is None and body is not None:
            raw = json.dumps(body).encode()  # NaN and Infinity as Python writes them
        status, answer = _request(server, path, method=method, raw=raw)
        assert 400 <= status < 500, (path, raw[:200] if raw else raw, status, answer)
        if path in ("/score", "/rank") and method == "POST":
            assert answer.get("error"), (raw[:200], answer)
    assert _request(server, "/health")[0] == 200


def test_concurrent_requests_are_batched_together(model, server):
    scorer = Scorer.load(model)
    before = _request(server, "/health")[1]

    def client(c):
        rows = [{**CONTEXT, **ITEM, "user_id": c, "item_id": (c * 7 + i) % 80} for i in range(3)]
        out = []
        for _ in range(10):
            status, body = _request(server, "/score", {"rows": rows})
            assert status == 200
            out.append((rows, body))
        return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(client, range(8)) for r in rs]
    for rows, body in results:  # each answer is its own rows' predictions
        np.testing.assert_allclose(
            [p["click"] for p in body["predictions"]], scorer.score(rows)["click"], atol=1e-6
        )
    after = _request(server, "/health")[1]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 80 and batches < requests


def test_sigterm_answers_requests_in_flight_then_exits(model):
    proc, port = _start(model, "--max_wait_ms=1500")  # requests wait 1.5 s for company
    rows = [{**CONTEXT, **ITEM}]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(_request, port, "/score", {"rows": rows}) for _ in range(4)]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in pending]
    assert [status for status, _ in answers] == [200] * 4
    # uvicorn ends by re-raising the signal it caught, once every request is answered.
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in proc.stderr.read()
