"""Typed Python client of the Foresight service (sync and async, on httpx).

    from foresight.serving.client import ForesightClient
    from foresight.serving.schemas import ActionQuery

    with ForesightClient("http://127.0.0.1:3000", api_key=None) as fs:
        [pred] = fs.predict_actions([ActionQuery(obs={"agent_0": [[...18 floats...]]})])
        pred.agents["agent_0"].probs

Requests are the pydantic types of :mod:`foresight.serving.schemas` (or plain dicts of the
same shape), checked here before they are sent. Observation histories travel as base64
float32 (``encoding="array"``, the default: cheaper to write and to parse) or as JSON
numbers (``encoding="json"``). Answers come back as the response types. A 4xx/5xx raises
:class:`ForesightError` carrying the status and the server's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from foresight.serving.schemas import (
    SERVER_CHECKS,
    ActionPrediction,
    ActionQuery,
    ActRequest,
    ActResponse,
    EncodedArray,
    EpisodesRequest,
    EpisodesResponse,
    ImagineRequest,
    ImagineResponse,
    ModelsResponse,
    NextPrediction,
    NextQuery,
    ReloadResponse,
)

M = TypeVar("M", bound=BaseModel)
_ACTIONS = TypeAdapter(list[ActionPrediction])
_NEXT = TypeAdapter(list[NextPrediction])


class ForesightError(RuntimeError):
    """The service answered with an error status."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.detail = status, message, detail


def _as(model: type[M], value: M | dict[str, Any]) -> M:
    """The request checked for shape; the checks against the served models are the server's."""
    if isinstance(value, model):
        return value
    token = SERVER_CHECKS.set(False)
    try:
        return model.model_validate(value)
    finally:
        SERVER_CHECKS.reset(token)


Encoding = Literal["array", "json"]
"""How a client sends observation histories: ``array`` (default) as base64 float32
(:class:`~foresight.serving.schemas.EncodedArray`, cheaper to write and to parse), ``json``
as lists of numbers."""


def _dump(value: BaseModel, encoding: Encoding = "array") -> dict[str, Any]:
    body = value.model_dump(mode="json", exclude_none=True)
    if encoding == "array" and "obs" in body:
        body["obs"] = {
            agent: steps if isinstance(steps, dict) else EncodedArray.of(steps).model_dump()
            for agent, steps in body["obs"].items()
        }
    return body


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        message, detail = body.get("error", response.text), body.get("detail")
    except (ValueError, AttributeError):
        message, detail = response.text, None
    raise ForesightError(response.status_code, str(message), detail)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _queries(
    model: type[M], queries: Sequence[M | dict[str, Any]], encoding: Encoding
) -> dict[str, Any]:
    return {"queries": [_dump(_as(model, q), encoding) for q in queries]}


class ForesightClient:
    """Blocking client; one connection pool per instance (use it as a context manager)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        encoding: Encoding = "array",
    ) -> None:
        self._http = httpx.Client(base_url=url, headers=_headers(api_key), timeout=timeout)
        self.encoding = encoding

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.post(path, json=body or {})
        _raise_for(response)
        return response.json()

    def predict_actions(
        self, queries: Sequence[ActionQuery | dict[str, Any]]
    ) -> list[ActionPrediction]:
        """Each agent's next-action distribution, one answer per query."""
        return _ACTIONS.validate_python(
            self._post("/predict_actions", _queries(ActionQuery, queries, self.encoding))
        )

    def predict_next(self, queries: Sequence[NextQuery | dict[str, Any]]) -> list[NextPrediction]:
        """Next joint observation distribution, rewards, termination, one per query."""
        return _NEXT.validate_python(
            self._post("/predict_next", _queries(NextQuery, queries, self.encoding))
        )

    def imagine(self, request: ImagineRequest | dict[str, Any]) -> ImagineResponse:
        """K sampled futures of H steps."""
        body = _dump(_as(ImagineRequest, request), self.encoding)
        return ImagineResponse.model_validate(self._post("/imagine", body))

    def act(self, request: ActRequest | dict[str, Any]) -> ActResponse:
        """The planner's next action for each ego agent, with its predicted return, the
        other candidates' scores and the others' predicted next actions."""
        body = _dump(_as(ActRequest, request), self.encoding)
        return ActResponse.model_validate(self._post("/act", body))

    def post_episodes(self, request: EpisodesRequest | dict[str, Any]) -> EpisodesResponse:
        """Whole episodes for the landing zone (``foresight.serving.recorder`` builds them)."""
        body = _as(EpisodesRequest, request).model_dump()
        return EpisodesResponse.model_validate(self._post("/episodes", body))

    def models(self) -> ModelsResponse:
        return ModelsResponse.model_validate(self._post("/models"))

    def reload(self) -> ReloadResponse:
        return ReloadResponse.model_validate(self._post("/reload"))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ForesightClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncForesightClient:
    """The same calls for asyncio code (many concurrent requests on one pool)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_connections: int = 100,
        encoding: Encoding = "array",
    ) -> None:
        self.encoding = encoding
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(
            base_url=url, headers=_headers(api_key), timeout=timeout, limits=limits
        )

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self._http.post(path, json=body or {})
        _raise_for(response)
        return response.json()

    async def predict_actions(
        self, queries: Sequence[ActionQuery | dict[str, Any]]
    ) -> list[ActionPrediction]:
        return _ACTIONS.validate_python(
            await self._post("/predict_actions", _queries(ActionQuery, queries, self.encoding))
        )

    async def predict_next(
        self, queries: Sequence[NextQuery | dict[str, Any]]
    ) -> list[NextPrediction]:
        return _NEXT.validate_python(
            await self._post("/predict_next", _queries(NextQuery, queries, self.encoding))
        )

    async def imagine(self, request: ImagineRequest | dict[str, Any]) -> ImagineResponse:
        body = _dump(_as(ImagineRequest, request), self.encoding)
        return ImagineResponse.model_validate(await self._post("/imagine", body))

    async def act(self, request: ActRequest | dict[str, Any]) -> ActResponse:
        body = _dump(_as(ActRequest, request), self.encoding)
        return ActResponse.model_validate(await self._post("/act", body))

    async def post_episodes(self, request: EpisodesRequest | dict[str, Any]) -> EpisodesResponse:
        body = _as(EpisodesRequest, request).model_dump()
        return EpisodesResponse.model_validate(await self._post("/episodes", body))

    async def models(self) -> ModelsResponse:
        return ModelsResponse.model_validate(await self._post("/models"))

    async def reload(self) -> ReloadResponse:
        return ReloadResponse.model_validate(await self._post("/reload"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncForesightClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
