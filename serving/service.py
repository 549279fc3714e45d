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
    FORESIGHT_TRACE_API        1: OpenTelemetry spans on the API routes (default 0)
    FORESIGHT_EPISODES_MAX_ROWS, _BUFFER_ROWS, _BUFFER_BYTES, _FLUSH_SECONDS, _CONCURRENCY:
                               POST /episodes: rows per request (20,000), the buffer
                               written to <store>/landing/ (see foresight.serving.episodes)

Every flag is read when the service is built (``Foresight()``, the middleware when the
ASGI app starts), so tests set them with ``monkeypatch.setenv``; only FORESIGHT_TRACE_API
is read at import, because it is part of the service's BentoML configuration.

A reference that does not resolve stops the service at start-up with the reason.

Adaptive batching: /predict_actions and /predict_next hand their queries to a
:class:`~foresight.serving.batching.Batcher` of their own (BentoML's batching is not used:
its dispatcher held a lone request back by a wait it learned under load). A request that
finds the model idle leaves on the next turn of the event loop (with what was parsed in the
same turn); under load a batch holds what arrived while the previous one ran, up to
``MAX_BATCH_SIZE`` queries. A request
queued longer than ``MAX_LATENCY_MS`` is answered 503 when its turn comes. An agent asks at
decision time, so a late answer is worth little: 1 s is an order of magnitude above the
p99 at 64 concurrent clients (BENCHMARKS.md, no request refused) and low enough that an
overloaded server sheds load quickly instead of queueing without bound.

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

from foresight.datasets.storage import Store
from foresight.serving import fastio, runtime
from foresight.serving.batching import Batcher
from foresight.serving.episodes import EpisodeSink
from foresight.serving.middleware import ForesightMiddleware
from foresight.serving.schemas import (
    MAX_QUERIES,
    ActionPrediction,
    ActionQuery,
    ActRequest,
    ActResponse,
    EchoResponse,
    EpisodesRequest,
    EpisodesResponse,
    ImagineRequest,
    ImagineResponse,
    ModelsResponse,
    NextPrediction,
    NextQuery,
    ReloadResponse,
    ServedModel,
)

MAX_LATENCY_MS = 1000
"""Longest a batched request may wait in the queue before it is answered 503 (module doc)."""
MAX_BATCH_SIZE = 64
"""Queries per model call from merged requests; a larger request runs as one batch alone."""
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
        self.inline_max = int(os.environ.get("FORESIGHT_INLINE_QUERIES", DEFAULT_INLINE_QUERIES))
        self.batchers = {
            route: Batcher(
                functools.partial(self._compute, getattr(runtime, route)),
                MAX_BATCH_SIZE,
                MAX_LATENCY_MS / 1000,
            )
            for route in BATCHED_ROUTES
        }
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

    async def _compute(self, fn: Callable[..., list[T]], queries: list) -> list[T]:
        """One batch of queries through ``fn`` (a runtime predict function) on the current
        models: small batches on the event loop, large ones in the model thread."""
        inline = len(queries) <= self.inline_max
        return await self._run(fn, self.host.current, queries, inline=inline)

    async def _predict(self, route: str, queries: list) -> list:
        if self.batching:
            return await self.batchers[route](queries)
        return await self._compute(getattr(runtime, route), queries)

    def __is_ready__(self) -> bool:
        return self.host.current is not None

    @bentoml.api(route="/predict_actions")  # batched by self.batchers, not by BentoML
    async def predict_actions(self, queries: ActionQueries) -> JSONList[ActionPrediction]:
        """Per-agent next-action distributions (probabilities, or mean and std), one answer
        per query, in order."""
        return await self._predict("predict_actions", queries)

    @bentoml.api(route="/predict_next")  # batched by self.batchers, not by BentoML
    async def predict_next(self, queries: NextQueries) -> JSONList[NextPrediction]:
        """Next joint observation (mean and std, or samples), rewards and termination
        probability for a joint action, one answer per query, in order."""
        return await self._predict("predict_next", queries)

    @bentoml.api(route="/imagine", input_spec=ImagineRequest)
    async def imagine(self, **request) -> ImagineResponse:
        """K sampled futures of H steps; agents with a plan follow it, the others the
        behavior model."""
        req = ImagineRequest.model_construct(**request)
        return await self._run(runtime.imagine_futures, self.host.current, req, heavy=True)

    @bentoml.api(route="/act", input_spec=ActRequest)
    async def act(self, ctx: bentoml.Context = None, **request) -> ActResponse:
        """The planner's next action for each ego agent: its predicted return, the scores of
        the other first actions, and the predicted next actions of the others. The
        ``Server-Timing`` header gives the planner's decision (``decide``) and the whole
        request in the service (``app``), in ms."""
        req = ActRequest.model_construct(**request)
        timing: dict[str, float] = {}
        try:
            answer = await self._run(runtime.act, self.host.current, req, timing, heavy=True)
        except runtime.ActInputError as exc:
            raise BadInput(str(exc)) from exc
        except runtime.PlannerUnavailable as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus.CONFLICT) from exc
        if ctx is not None:  # None: called in process, not through HTTP
            ctx.response.headers["server-timing"] = f"decide;dur={1000 * timing['decide']:.3f}"
        return answer

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

    @functools.cached_property
    def episode_sink(self) -> EpisodeSink:
        """Buffer of posted episodes (foresight.serving.episodes), writing into the store's
        landing zone; the served world model's card names the default dataset."""
        return EpisodeSink(Store.from_env(), lambda: self.host.current.world.card)

    @bentoml.on_startup
    def start_episode_sink(self) -> None:
        self.episode_sink.start()

    @bentoml.on_shutdown
    def flush_episodes(self) -> None:
        """Write every accepted episode before the process goes (SIGTERM included)."""
        if "episode_sink" in self.__dict__:
            self.episode_sink.close()

    @bentoml.api(route="/episodes", input_spec=EpisodesRequest)
    async def episodes(self, **request) -> EpisodesResponse:
        """Whole episodes in the trajectory contract, checked as ingest checks them (400
        naming each bad row; nothing of the request is kept), buffered and written as
        files into <store>/landing/<dataset>/ for the landing sensor; 413 past
        FORESIGHT_EPISODES_MAX_ROWS rows, 503 with Retry-After while the landing zone
        cannot be written (foresight.serving.episodes)."""
        return await self.episode_sink.handle(EpisodesRequest.model_construct(**request))


Foresight.add_asgi_middleware(ForesightMiddleware)
for _route in ("predict_actions", "predict_next"):
    fastio.install(Foresight.apis[_route])
