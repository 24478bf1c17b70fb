"""An HTTP endpoint for an exported model: Starlette on uvicorn (the ``serve`` extra).

    python serve.py http --model=models/ecommerce --port=8080

- ``GET /health``: the model's tasks, features and counters (requests, batches);
- ``POST /score`` ``{"rows": [{feature: raw value}, ...]}`` ->
  ``{"predictions": [{task: prediction}, ...]}``;
- ``POST /rank`` ``{"context": {...}, "candidates": [...], "k": 10, "fusion": {...},
  "diversity": {...}}`` -> ``{"items": [{"item", "score", "predictions"}, ...]}``
  (``Scorer.rank``).

Every problem with a request is a 4xx whose JSON ``error`` names it (bad JSON, NaN or
infinity, a body over ``max_body_bytes``, unknown keys, a missing feature, a wrong type,
too many rows or candidates, an unknown task in a fusion rule); ids training never saw take
the out-of-vocabulary row. Concurrent /score requests are batched: each request's rows are
validated and encoded as it arrives, then queue for the model; every model call takes what
has queued (up to ``max_batch`` rows), after waiting up to ``max_wait_ms`` for more. Model
calls run one at a time on a worker thread, so the event loop keeps accepting requests.
uvicorn stops on SIGTERM/SIGINT after the requests in flight are answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np

from mtl_jax.serving.rows import RequestError
from mtl_jax.serving.scorer import Scorer

log = logging.getLogger("mtl_jax")


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # loopback: exposing a model is a deliberate choice
    port: int = 8080
    max_batch: int = 1024  # rows per batched model call
    # How long a request waits for others to share its model call; 0: not at all, and the
    # requests that arrive while the model is busy share the next call.
    max_wait_ms: float = 0.0
    max_rows: int = 1024  # rows of one /score request
    max_candidates: int = 10_000  # candidates of one /rank request
    max_body_bytes: int = 4 << 20


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _no_constants(name: str) -> Any:
    raise HTTPError(400, f"body: {name} is not a JSON number (NaN and infinities are refused)")


def parse_body(body: bytes, limit: int, keys: dict[str, bool]) -> dict[str, Any]:
    """The request's JSON object; ``keys``: allowed key -> required."""
    if len(body) > limit:
        raise HTTPError(413, f"body: {len(body)} bytes, more than the {limit} allowed")
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"body is not JSON: {e}") from None
    except RecursionError:
        raise HTTPError(400, "body is nested too deeply") from None
    if not isinstance(value, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise HTTPError(400, f"body: unknown keys {unknown}; valid: {sorted(keys)}")
    missing = sorted(k for k, required in keys.items() if required and k not in value)
    if missing:
        raise HTTPError(400, f"body: missing {missing}")
    return value


class Batcher:
    """Shares model calls among concurrent /score requests (see the module doc)."""

    def __init__(self, scorer: Scorer, config: ServerConfig, pool: concurrent.futures.Executor):
        self.scorer, self.config, self.pool = scorer, config, pool
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests = self.batches = 0

    async def score(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            waiting, rows = [first], len(next(iter(first[0].values())))
            deadline = loop.time() + self.config.max_wait_ms / 1e3
            while rows < self.config.max_batch:
                if not self.queue.empty():  # arrived while the model was busy: take it
                    item = self.queue.get_nowait()
                else:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                waiting.append(item)
                rows += len(next(iter(item[0].values())))
            await self._score_together(waiting)

    async def _score_together(self, waiting: list) -> None:
        merged = {k: np.concatenate([w[0][k] for w in waiting]) for k in waiting[0][0]}
        self.requests += len(waiting)
        self.batches += 1
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.scorer.score_inputs, merged
            )
        except Exception as e:  # a failure of the model call fails its requests, not the server
            for _, future in waiting:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for inputs, future in waiting:
            n = len(next(iter(inputs.values())))
            if not future.done():
                future.set_result({k: v[start : start + n] for k, v in out.items()})
            start += n


def make_app(scorer: Scorer, config: ServerConfig) -> Any:
    """The Starlette application serving ``scorer``."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    scorer.max_candidates = config.max_candidates
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(scorer, config, pool)
        worker = asyncio.create_task(state["batcher"].run())
        try:
            yield
        finally:
            worker.cancel()
            pool.shutdown(wait=True)

    def answer(handler):
        async def endpoint(request: Request) -> JSONResponse:
            try:
                return JSONResponse(await handler(request))
            except HTTPError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception:
                log.exception("request failed")
                return JSONResponse({"error": "internal error"}, status_code=500)

        return endpoint

    async def body(request: Request) -> bytes:
        """The body, read up to the limit; a larger one is drained (up to 16x the limit, so
        the client can read the 413 instead of a broken pipe) and refused."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= config.max_body_bytes:
                chunks.append(chunk)
            elif size > 16 * config.max_body_bytes:
                break
        if size > config.max_body_bytes:
            raise HTTPError(413, f"body: more than the {config.max_body_bytes} bytes allowed")
        return b"".join(chunks)

    async def health(request: Request) -> dict:
        batcher = state.get("batcher")
        return {
            "status": "ok",
            "tasks": scorer.manifest["tasks"],
            "features": scorer.rows.columns,
            "catalogue": scorer.catalogue is not None,
            "requests": batcher.requests if batcher else 0,
            "batches": batcher.batches if batcher else 0,
        }

    async def score(request: Request) -> dict:
        value = parse_body(await body(request), config.max_body_bytes, {"rows": True})
        rows = value["rows"]
        if not isinstance(rows, list) or not 1 <= len(rows) <= config.max_rows:
            count = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise HTTPError(
                400, f"rows: expected a list of 1 to {config.max_rows} rows, got {count}"
            )
        inputs = scorer.rows.encode(rows)
        out = await state["batcher"].score(inputs)
        return {
            "predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(len(rows))]
        }

    async def rank(request: Request) -> dict:
        keys = {
            "context": True,
            "candidates": True,
            "k": False,
            "fusion": False,
            "diversity": False,
        }
        value = parse_body(await body(request), config.max_body_bytes, keys)
        started = time.perf_counter()
        items = await asyncio.get_running_loop().run_in_executor(
            pool,
            lambda: scorer.rank(
                value["context"],
                value["candidates"],
                value.get("k", 10),
                value.get("fusion"),
                value.get("diversity"),
            ),  # fmt: skip
        )
        return {"items": items, "ms": 1e3 * (time.perf_counter() - started)}

    routes = [
        Route("/health", answer(health), methods=["GET"]),
        Route("/score", answer(score), methods=["POST"]),
        Route("/rank", answer(rank), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(model_dir: str, config: ServerConfig) -> None:
    """Loads the export and serves it until SIGTERM/SIGINT (in-flight requests finish)."""
    import uvicorn

    scorer = Scorer.load(model_dir)
    for n in (1, 8, 64):  # compile the common batch-size buckets before the first request
        first = {k: np.zeros((n, *s), d) for k, (d, s) in scorer.inputs.items()}
        scorer.score_inputs(first)
    uvicorn.run(
        make_app(scorer, config), host=config.host, port=config.port, log_level="warning",
        timeout_graceful_shutdown=30,
    )  # fmt: skip
