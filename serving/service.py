"""The Foresight BentoML service: world and behavior models behind a JSON API.

    bentoml serve serving.service:Foresight      # or: foresight serve --port 3000

Configuration (environment, read at start-up):

    FORESIGHT_WORLD_MODEL      world model reference          (default world@production)
    FORESIGHT_BEHAVIOR_MODEL   behavior model reference       (default behavior@production)
    FORESIGHT_STORE            the store holding the registry (default ./.foresight)
    FORESIGHT_RELOAD_SECONDS   alias polling period, 0 = off  (default 30)
    FORESIGHT_API_KEY          when set, every API call needs `Authorization: Bearer <key>`
    FORESIGHT_MAX_BODY_BYTES   largest request body           (default 8 MiB)
    FORESIGHT_MODEL_SOURCE     registry (default) | bento (the versions packaged in a bento)
    FORESIGHT_BATCHING         1 (default) | 0: adaptive batching off (for benchmarks)
    FORESIGHT_TORCH_THREADS    torch intra-op threads (default 1: small models answer
                               faster on one thread, and the event loop keeps a core)

A reference that does not resolve stops the service at start-up with the reason.

Adaptive batching: /predict_actions and /predict_next queue requests for up to
``MAX_LATENCY_MS``; BentoML answers 503 to a request that would wait longer. An agent
asks at decision time, so a late answer is worth little: 1 s is far above the measured
latency at 64 concurrent clients (bench/results/serve.md) and low enough that an
overloaded server sheds load quickly instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, TypeVar

import bentoml
import torch
from bentoml.validators import ContentType
from pydantic import Field

from serving import runtime
from serving.middleware import ForesightMiddleware
from serving.schemas import (
    MAX_QUERIES,
    ActionPrediction,
    ActionQuery,
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
BATCHING = os.environ.get("FORESIGHT_BATCHING", "1") != "0"
"""Read at import: the flag is fixed when the service class is built."""
DEFAULT_RELOAD_SECONDS = 30.0

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
    traffic={"timeout": 60, "max_concurrency": 512},
)
class Foresight:
    """Next-action distributions, next-step distributions and imagined futures."""

    def __init__(self) -> None:
        torch.set_num_threads(int(os.environ.get("FORESIGHT_TORCH_THREADS", "1")))
        self.host = runtime.ModelHost(runtime.refs_from_env())
        self.host.start_polling(_reload_seconds())

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.host.close()

    def __is_ready__(self) -> bool:
        return self.host.current is not None

    @bentoml.api(
        route="/predict_actions",
        batchable=BATCHING,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict_actions(self, queries: ActionQueries) -> JSONList[ActionPrediction]:
        """Per-agent next-action distributions (probabilities, or mean and std), one answer
        per query, in order."""
        return runtime.predict_actions(self.host.current, queries)

    @bentoml.api(
        route="/predict_next",
        batchable=BATCHING,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict_next(self, queries: NextQueries) -> JSONList[NextPrediction]:
        """Next joint observation (mean and std, or samples), rewards and termination
        probability for a joint action, one answer per query, in order."""
        return runtime.predict_next(self.host.current, queries)

    @bentoml.api(route="/imagine", input_spec=ImagineRequest)
    def imagine(self, **request) -> ImagineResponse:
        """K sampled futures of H steps; agents with a plan follow it, the others the
        behavior model."""
        return runtime.imagine_futures(self.host.current, ImagineRequest.model_construct(**request))

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
        """Returns its input: the cost of HTTP and JSON alone (benchmarks, smoke tests)."""
        return EchoResponse(message=message)


Foresight.add_asgi_middleware(ForesightMiddleware)
