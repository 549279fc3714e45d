"""The Foresight BentoML service: world and behavior models behind a JSON API.

    bentoml serve foresight.serving.service:Foresight      # or: foresight serve --port 3000

Configuration (environment, read at start-up):

    FORESIGHT_WORLD_MODEL      world model reference          (default world@production)
    FORESIGHT_BEHAVIOR_MODEL   behavior model reference       (default behavior@production)
    FORESIGHT_STORE            the store holding the registry (default ./.foresight)
    FORESIGHT_RELOAD_SECONDS   alias polling period, 0 = off  (default 30)
    FORESIGHT_API_KEY          when set, every API call needs `Authorization: Bearer <key>`
                               (/metrics too unless FORESIGHT_METRICS_OPEN=1)
    FORESIGHT_MAX_BODY_BYTES   largest request body           (default 8 MiB)
    FORESIGHT_BODY_TIMEOUT_S, FORESIGHT_MAX_CLIENT_REQUESTS, FORESIGHT_MAX_REQUESTS,
    FORESIGHT_HEAVY_QUEUE, FORESIGHT_BENCH_ENDPOINTS: limits against hostile clients
                               and the /echo endpoint (see foresight.serving.middleware)
    FORESIGHT_MODEL_SOURCE     registry (default) | bento (the versions packaged in a bento)
    FORESIGHT_BATCHING         1 (default) | 0: adaptive batching off (for benchmarks)
    FORESIGHT_TORCH_THREADS    torch intra-op threads (default 1: small models answer
                               faster on one thread, and the event loop keeps a core)
    FORESIGHT_INLINE_QUERIES   batches up to this many queries run on the event loop (4)
    FORESIGHT_BATCH_CORK       1: BentoML's learned batching wait (default 0, see below)
    FORESIGHT_TRACE_API        1: OpenTelemetry spans on the API routes (default 0)

Every flag is read when the service is built (``Foresight()``, the middleware when the
ASGI app starts), so tests set them with ``monkeypatch.setenv``; only FORESIGHT_TRACE_API
is read at import, because it is part of the service's BentoML configuration.

A reference that does not resolve stops the service at start-up with the reason.

Adaptive batching: /predict_actions and /predict_next queue requests for up to
``MAX_LATENCY_MS``; BentoML (1.4.39) answers 503 to the oldest queued request when its
wait so far plus the predicted time of a batch of the whole queue reaches it. An agent
asks at decision time, so a late answer is worth little: 1 s is 11x the p99 measured at
64 concurrent clients (91 ms, bench/results/serve.md, no request refused) and low enough
that an overloaded server sheds load quickly instead of queueing without bound. A batch leaves as
soon as the model is free (:func:`_dispatch_when_free`), so at low load a request is not
held back, and under load a batch holds what arrived while the previous one ran.

/act and /imagine run in their own thread behind a bounded queue (the middleware answers
503 when it is full), so a burst of them never delays the batched endpoints.

Where the time of a request goes (bench/results/serve.md has the numbers): small batches
run on the event loop, because handing ~1 ms of model work to a thread and back costs two
wake-ups and GIL hand-offs (ms each on a loaded machine); large batches run in one model
thread, /imagine and /act in another. The garbage collector is tuned at start-up
(:meth:`Foresight.tune_garbage_collector`) and batched answers are written by orjson
(:mod:`foresight.serving.fastio`). /act plans with one :class:`~foresight.training.agents.planning.Planner` built
from the served models (rebuilt when a reload swaps them).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import bentoml
import torch
from bentoml.exceptions import BadInput, BentoMLException
from bentoml.validators import ContentType
from pydantic import Field

from foresight.serving import fastio, runtime
from foresight.serving.middleware import ForesightMiddleware
from foresight.serving.schemas import (
    MAX_QUERIES,
    ActionPrediction,
    ActionQuery,
    ActRequest,
    ActResponse,
    EchoResponse,
    ImagineRequest,
    ImagineResponse,
    ModelsResponse,
    NextPrediction,
    NextQuery,
    ReloadResponse,
    ServedModel,
)

MAX_LATENCY_MS = 1000
"""Longest a batched request may wait before BentoML answers 503 (see the module doc)."""
MAX_BATCH_SIZE = 64
"""Queries per model call; larger requests are split across calls by BentoML."""
BATCHED_ROUTES = ("predict_actions", "predict_next")
DEFAULT_RELOAD_SECONDS = 30.0
TRACE_API = os.environ.get("FORESIGHT_TRACE_API", "0") == "1"
"""1: OpenTelemetry spans on the API routes too (set it when tracing is configured)."""
API_ROUTES = ("predict_actions", "predict_next", "imagine", "act", "models", "reload", "echo")
GC_THRESHOLD = 50_000
"""Net container allocations between young-generation collections (Python's default: 700);
see :meth:`Foresight.tune_garbage_collector`."""
DEFAULT_INLINE_QUERIES = 4
"""Batches up to this many queries (FORESIGHT_INLINE_QUERIES) run on the event loop;
larger ones in the model thread.

A small batch costs ~1 ms of model time, less than the two thread hand-offs it would
otherwise take (each one a wake-up plus a wait for the GIL: 0.1 ms on an idle machine,
2-5 ms on a loaded one, measured). A large batch (~0.5 ms per query) goes to the model
thread, where torch releases the GIL and HTTP work for the next batch overlaps it."""

ActionQueries = Annotated[list[ActionQuery], Field(min_length=1, max_length=MAX_QUERIES)]
NextQueries = Annotated[list[NextQuery], Field(min_length=1, max_length=MAX_QUERIES)]
T = TypeVar("T")
JSONList = Annotated[list[T], ContentType("application/json")]
"""A JSON list answer. The media type is given because otherwise BentoML rebuilds the
list's JSON schema on every response to find it (~3 ms per request, measured)."""


def _dispatch_when_free(enabled: bool = True) -> None:
    """Keep BentoML's adaptive batcher from holding a lone request back (``enabled``), or
    give it back its learned wait (FORESIGHT_BATCH_CORK=1).

    The batcher (``CorkDispatcher``) holds a request until the queue's wait reaches its
    ``Optimizer.wait``, the average wait of the last 50 batches. Under load every request
    waits for the batch before it, so that average grows to the batch time, and afterwards
    each request at low load is held that long, which keeps the average there (it decays
    by ~5% per refresh, one per 5 s at most): measured, /predict_actions at 1 client went
    from 2.6 ms before a burst of 64 clients to 35-83 ms after it. With the learned wait at
    0 a batch leaves as soon as the model is free and holds every request that arrived
    while it was busy: batch sizes still follow the load (mean 32 at 64 clients), and
    requests that would wait past ``max_latency_ms`` still get 503.

    This patches a BentoML internal (1.4.39) for the whole worker process;
    tests/serving checks that it still takes.
    """
    from bentoml._internal.marshal.dispatcher import Optimizer

    refresh = Optimizer.trigger_refresh
    patched = getattr(refresh, "_foresight", False)
    if not enabled:
        if patched:
            Optimizer.trigger_refresh = refresh.__wrapped__
        return
    if patched:
        return

    @functools.wraps(refresh)
    def trigger_refresh(self) -> None:
        refresh(self)
        self.wait = 0.0

    trigger_refresh._foresight = True  # type: ignore[attr-defined]
    Optimizer.trigger_refresh = trigger_refresh


_dispatch_when_free()  # the default; Foresight() applies FORESIGHT_BATCH_CORK


def _reload_seconds() -> float:
    raw = os.environ.get("FORESIGHT_RELOAD_SECONDS", str(DEFAULT_RELOAD_SECONDS))
    try:
        return max(0.0, float(raw))
    except ValueError as exc:
        raise ValueError(
            f"FORESIGHT_RELOAD_SECONDS must be a number of seconds, got {raw!r}"
        ) from exc


@bentoml.service(
    name="foresight",
    workers=1,
    threads=1,
    # No BentoML max_concurrency: it counts a request from its headers on, so clients that
    # stall mid-body filled it (every request got 429). foresight.serving.middleware limits instead.
    traffic={"timeout": 60},
    # Tracing samples nothing unless configured, yet its middleware opens a span per
    # request and per body chunk sent or received (~0.2 ms a request, measured): the API
    # routes skip it unless FORESIGHT_TRACE_API=1. Health and metrics routes keep it.
    **({} if TRACE_API else {"tracing": {"excluded_urls": [f"/{r}$" for r in API_ROUTES]}}),
)
class Foresight:
    """Next-action distributions, next-step distributions and imagined futures."""

    def __init__(self) -> None:
        torch.set_num_threads(int(os.environ.get("FORESIGHT_TORCH_THREADS", "1")))
        self.batching = os.environ.get("FORESIGHT_BATCHING", "1") != "0"
        for route in BATCHED_ROUTES:  # BentoML reads the flag per request
            Foresight.apis[route].batchable = self.batching
        _dispatch_when_free(os.environ.get("FORESIGHT_BATCH_CORK", "0") != "1")
        self.inline_max = int(os.environ.get("FORESIGHT_INLINE_QUERIES", DEFAULT_INLINE_QUERIES))
        self.host = runtime.ModelHost(runtime.refs_from_env())
        self.host.start_polling(_reload_seconds())
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="foresight-model")
        self._heavy_thread = ThreadPoolExecutor(1, thread_name_prefix="foresight-heavy")
        for route in API_ROUTES:  # bind once: BentoML's per-request lookup of an API method
            if hasattr(type(self), route):  # re-reads its signature (~0.1 ms, measured)
                self.__dict__[route] = getattr(self, route)

    @bentoml.on_startup
    def tune_garbage_collector(self) -> None:
        """Freeze the start-up heap out of garbage collection; collect young objects less often.

        Measured at 64 clients on /predict_actions (in-process ASGI loop, CPU per request):
        a request's parsed body holds ~50 lists, so the collector ran often, and each full
        pass walked the whole start-up heap (~280k objects: torch, pydantic, BentoML, the
        models): freezing it took 0.86 -> 0.60 ms. With the default young-generation
        threshold (700 allocations) the remaining passes still cost 0.07 ms per request
        (one every ~5 requests); at ``GC_THRESHOLD`` none ran in 4,000 requests, since
        almost everything a request allocates is freed by reference counting when it ends.
        Objects created later (a reloaded model, request data) are collected as before."""
        self._gc_threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *self._gc_threshold[1:])

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if hasattr(self, "_gc_threshold"):  # the process outlives the service (tests)
            gc.unfreeze()
            gc.set_threshold(*self._gc_threshold)
        self.host.close()
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._heavy_thread.shutdown(wait=False, cancel_futures=True)

    async def _run(
        self, fn: Callable[..., T], *args: Any, inline: bool = False, heavy: bool = False
    ) -> T:
        """``fn(*args)`` on the event loop when ``inline``; else in the model thread (large
        batches) or, when ``heavy``, the heavy thread (/imagine, /act: seconds of work that
        must not hold the batches back), each on FORESIGHT_TORCH_THREADS threads."""
        if inline:
            return fn(*args)
        pool = self._heavy_thread if heavy else self._model_thread
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def __is_ready__(self) -> bool:
        return self.host.current is not None

    @bentoml.api(
        route="/predict_actions",
        batchable=True,  # Foresight() applies FORESIGHT_BATCHING
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    async def predict_actions(self, queries: ActionQueries) -> JSONList[ActionPrediction]:
        """Per-agent next-action distributions (probabilities, or mean and std), one answer
        per query, in order."""
        inline = len(queries) <= self.inline_max
        return await self._run(runtime.predict_actions, self.host.current, queries, inline=inline)

    @bentoml.api(
        route="/predict_next",
        batchable=True,  # Foresight() applies FORESIGHT_BATCHING
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    async def predict_next(self, queries: NextQueries) -> JSONList[NextPrediction]:
        """Next joint observation (mean and std, or samples), rewards and termination
        probability for a joint action, one answer per query, in order."""
        inline = len(queries) <= self.inline_max
        return await self._run(runtime.predict_next, self.host.current, queries, inline=inline)

    @bentoml.api(route="/imagine", input_spec=ImagineRequest)
    async def imagine(self, **request) -> ImagineResponse:
        """K sampled futures of H steps; agents with a plan follow it, the others the
        behavior model."""
        req = ImagineRequest.model_construct(**request)
        return await self._run(runtime.imagine_futures, self.host.current, req, heavy=True)

    @bentoml.api(route="/act", input_spec=ActRequest)
    async def act(self, **request) -> ActResponse:
        """The planner's next action for each ego agent: its predicted return, the scores of
        the other first actions, and the predicted next actions of the others."""
        req = ActRequest.model_construct(**request)
        try:
            return await self._run(runtime.act, self.host.current, req, heavy=True)
        except runtime.ActInputError as exc:
            raise BadInput(str(exc)) from exc
        except runtime.PlannerUnavailable as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus.CONFLICT) from exc

    @bentoml.api(route="/models")
    async def models(self) -> ModelsResponse:
        """The loaded versions with their cards (lineage down to the dataset version)."""
        current = self.host.current
        return ModelsResponse(
            models=[
                ServedModel(
                    role=m.role,
                    ref=m.ref,
                    version=m.version,
                    bento_tag=m.bento_tag,
                    loaded_at=m.loaded_at,
                    card=m.card,
                )
                for m in (current.world, current.behavior)
            ],
            reload_interval_s=self.host.poll_interval,
        )

    @bentoml.api(route="/reload")
    async def reload(self) -> ReloadResponse:
        """Resolve the followed references now; load and swap in versions that moved.
        Requests in flight finish on the models they started with."""
        changes = await asyncio.to_thread(self.host.reload)
        return ReloadResponse(changes=changes)

    @bentoml.api(route="/echo")
    async def echo(self, message: str = "") -> EchoResponse:
        """Returns its input: the cost of HTTP and JSON alone. Benchmarks only: 404 unless
        FORESIGHT_BENCH_ENDPOINTS=1 (foresight.serving.middleware)."""
        return EchoResponse(message=message)


Foresight.add_asgi_middleware(ForesightMiddleware)
for _route in ("predict_actions", "predict_next"):
    fastio.install(Foresight.apis[_route])
