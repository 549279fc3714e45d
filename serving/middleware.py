"""ASGI middleware in front of the API: API key, limits against hostile clients, readable
errors.

Every setting is read from the environment when the middleware is built (when the ASGI
app starts), so tests set them with ``monkeypatch.setenv`` (:class:`Limits`):

- ``FORESIGHT_API_KEY`` set: every request except the health endpoints needs
  ``Authorization: Bearer <key>``, else 401; ``/metrics`` too unless
  ``FORESIGHT_METRICS_OPEN=1``.
- A body larger than ``FORESIGHT_MAX_BODY_BYTES`` (default 8 MiB) gets 413 before any of
  it is parsed; a body not received within ``FORESIGHT_BODY_TIMEOUT_S`` (default 15 s)
  gets 408 and the connection is closed.
- One client address may have ``FORESIGHT_MAX_CLIENT_REQUESTS`` requests in progress
  (default 128), body reading included, else 429: clients that open many connections and
  stall cannot take the service from the others.
- ``FORESIGHT_MAX_REQUESTS`` (default 512) requests may be in the service at once once
  their bodies are in; ``/act`` and ``/imagine`` together ``FORESIGHT_HEAVY_QUEUE``
  (default 4: one running, the others waiting). Past either: 503 with ``Retry-After`` at
  once. Bodies are read before these limits count a request, so slow senders hold no
  place in them (BentoML's own ``max_concurrency`` counts from the headers on, which is
  why the service does not use it).
- ``/act`` and ``/imagine`` answers carry ``Server-Timing: app;dur=<ms>``, the time from
  the body's arrival to the answer (``/act`` adds ``decide;dur=<ms>``, the planner's own
  decision), so a client can tell the service's time from the network's.
- ``/echo`` (the benchmarks' HTTP floor) answers 404 and is left out of ``/docs.json``
  unless ``FORESIGHT_BENCH_ENDPOINTS=1``.
- ``/docs.json`` documents all of that (:func:`public_spec`), so ``serving/openapi.json``
  and the live spec describe the answers clients really get.
- BentoML's 4xx bodies (a pydantic error list, or ``[{"error": ...}]``) become one shape:
  ``{"error": "<field>: <problem>; ...", "detail": [...]}``; every 503 says "overloaded"
  and carries ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
HEAVY_PATHS = frozenset({"/act", "/imagine"})
BENCH_PATHS = frozenset({"/echo"})
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
RETRY_AFTER_S = 1


def _env_number(name: str, default: float, kind=int, minimum: float = 0):
    raw = os.environ.get(name, str(default))
    try:
        value = kind(raw)
    except ValueError as exc:
        raise ValueError(
            f"{name} must be a{'n int' if kind is int else ' number'}, got {raw!r}"
        ) from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def max_body_bytes() -> int:
    return _env_number("FORESIGHT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int, 1024)


@dataclass(frozen=True)
class Limits:
    """What the middleware enforces (see the module doc for the environment names)."""

    api_key: str | None = None
    metrics_open: bool = False
    """``/metrics`` without the API key (a scraper on a trusted network)."""
    bench_endpoints: bool = False
    """Serve ``/echo``, which only benchmarks need."""
    max_body: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = 15.0
    """Longest a request body may take to arrive: 8 MiB at ~0.5 MB/s."""
    max_client_requests: int = 128
    """Requests in progress per client address; 2x the benchmarks' 64 concurrent clients."""
    max_requests: int = 512
    """Requests in the service at once (bodies read)."""
    heavy_queue: int = 4
    """/act and /imagine in progress at once: a max-size /act takes ~1 s of model time, so
    a request admitted waits at most a few seconds; the others get 503 at once."""

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            api_key=os.environ.get("FORESIGHT_API_KEY") or None,
            metrics_open=os.environ.get("FORESIGHT_METRICS_OPEN", "0") == "1",
            bench_endpoints=os.environ.get("FORESIGHT_BENCH_ENDPOINTS", "0") == "1",
            max_body=max_body_bytes(),
            body_timeout_s=_env_number("FORESIGHT_BODY_TIMEOUT_S", 15.0, float, 0.1),
            max_client_requests=_env_number("FORESIGHT_MAX_CLIENT_REQUESTS", 128, int, 1),
            max_requests=_env_number("FORESIGHT_MAX_REQUESTS", 512, int, 1),
            heavy_queue=_env_number("FORESIGHT_HEAVY_QUEUE", 4, int, 1),
        )

    @property
    def open_paths(self) -> frozenset[str]:
        return HEALTH_PATHS | ({"/metrics"} if self.metrics_open else set())

    @property
    def hidden_paths(self) -> frozenset[str]:
        return frozenset() if self.bench_endpoints else BENCH_PATHS


ERROR_SCHEMA_NAMES = ("InvalidArgument", "NotFound", "InternalServerError")
"""BentoML's error schemas; the middleware answers ``{"error": str, "detail": list}``."""
LIMIT_RESPONSES = {
    "401": "Unauthorized: FORESIGHT_API_KEY is set and the request lacks its Bearer token",
    "408": "Request Timeout: the body did not arrive within FORESIGHT_BODY_TIMEOUT_S",
    "413": "Payload Too Large: the body exceeds FORESIGHT_MAX_BODY_BYTES",
    "415": "Unsupported Media Type: the body is not sent as application/json",
    "429": "Too Many Requests: this client address has FORESIGHT_MAX_CLIENT_REQUESTS in progress",
    "503": "Service Unavailable: overloaded (queue full); retry after Retry-After seconds",
}


SERVER_TIMING_HEADER = {
    "Server-Timing": {
        "description": "app;dur=<ms>: the request's time in the service, from its body's "
        "arrival to this answer; on /act also decide;dur=<ms>, the planner's decision",
        "schema": {"type": "string"},
    }
}


def _error_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    return response


def public_spec(spec: dict[str, Any], hidden: frozenset[str] = BENCH_PATHS) -> dict[str, Any]:
    """The OpenAPI document as the middleware serves it: without the ``hidden`` paths and
    the schemas BentoML generated for them (``<api>__Input``, their answers' titles), with
    the error shape the middleware writes and the answers its limits give."""
    drop: set[str] = set()
    for path in hidden & set(spec.get("paths", {})):
        for op in spec["paths"][path].values():
            drop.add(f"{op.get('x-bentoml-name')}__Input")
            for response in op.get("responses", {}).values():
                for content in response.get("content", {}).values():
                    title = content.get("schema", {}).get("title")
                    if title and title.endswith("IODescriptor"):
                        drop.add(title)
    components = dict(spec.get("components", {}))
    schemas = {n: v for n, v in components.get("schemas", {}).items() if n not in drop}
    error = {
        "type": "object",
        "title": "Error",
        "properties": {
            "error": {"type": "string", "title": "Message", "description": "field: problem"},
            "detail": {"type": "array", "title": "Error Detail", "items": {}},
        },
        "required": ["error"],
    }
    schemas["Error"] = error
    for name in ERROR_SCHEMA_NAMES:
        if name in schemas:
            schemas[name] = {
                **error,
                "title": name,
                "description": schemas[name].get("description"),
            }
    components["schemas"] = schemas
    paths = {}
    for path, item in spec.get("paths", {}).items():
        if path in hidden:
            continue
        item = {method: dict(op) for method, op in item.items()}
        for op in item.values():
            responses = {str(k): v for k, v in op.get("responses", {}).items()}
            if path in HEALTH_PATHS:
                pass
            elif path == "/metrics":
                responses["401"] = _error_response(LIMIT_RESPONSES["401"])
            else:
                for code, text in LIMIT_RESPONSES.items():
                    responses.setdefault(code, _error_response(text, code in ("429", "503")))
            if path in HEAVY_PATHS and "200" in responses:
                responses["200"] = {**responses["200"], "headers": SERVER_TIMING_HEADER}
            op["responses"] = responses
        paths[path] = item
    return {**spec, "paths": paths, "components": components}


def _branch(part: Any) -> bool:
    """A union member's label in a pydantic error location (``list[list[float]]``,
    ``function-after[_decode(), EncodedArray]``), not a field."""
    return isinstance(part, str) and "[" in part


WRONG_KIND = frozenset({"list_type", "model_type", "model_attributes_type", "dict_type"})


def _relevant(detail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the errors of union members the input is not of (a JSON object is not a list)
    when another member has errors at the same place: those are the ones that say what is
    wrong (an observation history sent as an EncodedArray with a bad ``data``)."""

    def place(item: dict[str, Any]) -> tuple:
        loc = tuple(item.get("loc", ()))
        cut = next((i for i, part in enumerate(loc) if _branch(part)), len(loc))
        return loc[:cut]

    specific = {place(d) for d in detail if d.get("type") not in WRONG_KIND}
    kept = [
        d
        for d in detail
        if not (
            d.get("type") in WRONG_KIND
            and any(map(_branch, d.get("loc", ())))
            and place(d) in specific
        )
    ]
    return kept or detail


def _field_message(item: dict[str, Any]) -> str:
    """One pydantic error as ``queries.0.obs.agent_9: unknown agent id ...``."""
    loc = [str(p) for p in item.get("loc", ()) if p not in ("body",) and not _branch(p)]
    msg = str(item.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if sep and head and " " not in head:  # our validators start with the field's path
        loc.append(head)
        msg = rest
    if item.get("type") == "json_invalid":
        return f"body: not valid JSON ({msg})"
    if item.get("type") == "missing":
        msg = "field required"
    return f"{'.'.join(loc) or 'body'}: {msg}"


def error_body(status: int, payload: Any) -> dict[str, Any]:
    """Normalize a BentoML 4xx payload into ``{"error": ..., "detail": [...]}``."""
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict):
        payload = payload[0]  # BentoMLException 4xx: a one-element list
    if not isinstance(payload, dict):
        return {"error": str(payload), "detail": []}
    detail = payload.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        message = "; ".join(_field_message(d) for d in _relevant(detail))
        return {"error": message, "detail": detail}
    if isinstance(detail, str) and "error" not in payload:
        return {"error": detail, "detail": []}
    return {"error": str(payload.get("error", f"HTTP {status}")), "detail": detail or []}


def _server_timing(send, started: float):
    """``send`` adding ``app;dur=<ms>`` to the answer's ``Server-Timing`` header (after what
    the endpoint put there): the time from the body's arrival to the answer's start."""

    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            app = f"app;dur={1000 * (time.perf_counter() - started):.3f}".encode()
            headers, timing = [], None
            for k, v in message.get("headers", []):
                if k.lower() == b"server-timing":
                    timing = v if timing is None else timing + b", " + v
                else:
                    headers.append((k, v))
            timing = app if timing is None else timing + b", " + app
            message = {**message, "headers": [*headers, (b"server-timing", timing)]}
        await send(message)

    return wrapped


async def _send_json(send, status: int, body: dict[str, Any], headers=()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _media_type(scope) -> str | None:
    """The request's media type (``application/json``), None without a Content-Type."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return None


def _is_json(media: str) -> bool:
    """JSON bodies only: BentoML answered 500 to a JSON body sent as multipart/form-data."""
    return media == "application/json" or media.endswith("+json")


class ForesightMiddleware:
    """Auth, limits and error shapes for every HTTP request (see the module doc)."""

    def __init__(self, app, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits.from_env()
        self.api_key = self.limits.api_key
        self.max_body = self.limits.max_body
        self._per_client: Counter[str] = Counter()
        self._in_service = 0
        self._heavy = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limits = self.limits
        if path in HEALTH_PATHS:  # never limited: an orchestrator must see the truth
            return await self.app(scope, receive, send)
        if path in limits.hidden_paths:
            return await _send_json(send, 404, {"error": f"{path}: not found", "detail": []})
        if self.api_key and path not in limits.open_paths and not self._authorized(scope):
            return await _send_json(
                send,
                401,
                {"error": "Authorization: missing or wrong API key; send 'Bearer <key>'"},
                [(b"www-authenticate", b"Bearer")],
            )
        client = (scope.get("client") or ("?", 0))[0]
        if self._per_client[client] >= limits.max_client_requests:
            return await _send_json(
                send,
                429,
                {
                    "error": f"too many requests in progress from {client} (limit "
                    f"{limits.max_client_requests}); wait for answers before sending more",
                    "detail": [],
                },
                [(b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")],
            )
        self._per_client[client] += 1
        try:
            await self._admit(scope, receive, send, path)
        finally:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    async def _admit(self, scope, receive, send, path: str) -> None:
        """Read the body (bounded in size and time), then take a place in the service."""
        limits = self.limits
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            try:
                async with asyncio.timeout(limits.body_timeout_s):
                    body, too_big = await self._read_body(scope, receive)
            except TimeoutError:
                return await _send_json(
                    send,
                    408,
                    {
                        "error": f"body: not received within {limits.body_timeout_s:g} s",
                        "detail": [],
                    },
                    [(b"connection", b"close")],
                )
            if too_big:
                return await _send_json(
                    send,
                    413,
                    {"error": f"body: request body exceeds the limit of {self.max_body} bytes"},
                    [(b"connection", b"close")],
                )
            media = _media_type(scope)
            if body and media is not None and not _is_json(media):
                return await _send_json(
                    send,
                    415,
                    {
                        "error": f"Content-Type: {media!r} is not accepted; send the body as "
                        "JSON with 'Content-Type: application/json'",
                        "detail": [],
                    },
                )
            receive = self._replay(body, receive)
        heavy = path in HEAVY_PATHS
        if self._in_service >= limits.max_requests or (heavy and self._heavy >= limits.heavy_queue):
            what = (
                "/act and /imagine" if heavy and self._heavy >= limits.heavy_queue else "requests"
            )
            limit = limits.heavy_queue if what != "requests" else limits.max_requests
            return await _send_json(
                send,
                503,
                {
                    "error": f"overloaded: {limit} {what} already in progress; retry after "
                    f"{RETRY_AFTER_S} s",
                    "detail": [],
                },
                [(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
        self._in_service += 1
        self._heavy += heavy
        try:
            if path == "/docs.json":
                send = self._public_docs(send, limits.hidden_paths)
            if heavy:
                send = _server_timing(send, time.perf_counter())
            return await self.app(scope, receive, self._rewrite_errors(send))
        finally:
            self._in_service -= 1
            self._heavy -= heavy

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), self.api_key.encode()
                )
        return False

    async def _read_body(self, scope, receive) -> tuple[bytes, bool]:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return b"", True
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False

    @staticmethod
    def _public_docs(send, hidden: frozenset[str]):
        """Send ``/docs.json`` as :func:`public_spec` makes it."""
        state: dict[str, Any] = {}

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                state["start"], state["chunks"] = message, []
                return
            if "start" in state and message["type"] == "http.response.body":
                state["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                spec = public_spec(json.loads(b"".join(state.pop("chunks"))), hidden)
                start = state.pop("start")
                headers = [
                    (k, v)
                    for k, v in start.get("headers", [])
                    if k.lower() not in (b"content-length", b"content-type")
                ]
                return await _send_json(send, 200, spec, headers)
            return await send(message)

        return wrapped

    @staticmethod
    def _replay(body: bytes, receive):
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect

        return replay

    @staticmethod
    def _rewrite_errors(send):
        state: dict[str, Any] = {}

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if (400 <= status < 500 and status not in (401, 413)) or status == 503:
                    state["start"] = message
                    state["chunks"] = []
                    return
                return await send(message)
            if "start" in state and message["type"] == "http.response.body":
                state["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start = state.pop("start")
                raw = b"".join(state.pop("chunks"))
                try:
                    body = error_body(start["status"], json.loads(raw or b"null"))
                except ValueError:
                    body = {"error": raw.decode("utf-8", "replace").strip(), "detail": []}
                headers = [
                    (k, v)
                    for k, v in start.get("headers", [])
                    if k.lower() not in (b"content-length", b"content-type")
                ]
                if start["status"] == 503 and not any(
                    k.lower() == b"retry-after" for k, _ in headers
                ):
                    # the batcher's deadline (raised as a BentoML error, so without our header);
                    # a 503 that already has Retry-After (/episodes) keeps its own reason
                    body["error"] = f"overloaded: the model queue is full; retry ({body['error']})"
                    headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
                return await _send_json(send, start["status"], body, headers)
            return await send(message)

        return wrapped
