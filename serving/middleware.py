"""ASGI middleware in front of the API: API key, body size limit, readable 4xx messages.

- ``FORESIGHT_API_KEY`` set: every request except the health and metrics endpoints needs
  ``Authorization: Bearer <key>``, else 401.
- A body larger than ``FORESIGHT_MAX_BODY_BYTES`` (default 8 MiB) gets 413 before any of
  it is parsed.
- BentoML's 4xx bodies (a pydantic error list, or ``[{"error": ...}]``) become one shape:
  ``{"error": "<field>: <problem>; ...", "detail": [...]}``.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def max_body_bytes() -> int:
    raw = os.environ.get("FORESIGHT_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"FORESIGHT_MAX_BODY_BYTES must be an int, got {raw!r}") from exc
    if value < 1024:
        raise ValueError(f"FORESIGHT_MAX_BODY_BYTES must be >= 1024, got {value}")
    return value


def _field_message(item: dict[str, Any]) -> str:
    """One pydantic error as ``queries.0.obs.agent_9: unknown agent id ...``."""
    loc = [str(p) for p in item.get("loc", ()) if p not in ("body",)]
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
        return {"error": "; ".join(_field_message(d) for d in detail), "detail": detail}
    if isinstance(detail, str) and "error" not in payload:
        return {"error": detail, "detail": []}
    return {"error": str(payload.get("error", f"HTTP {status}")), "detail": detail or []}


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


class ForesightMiddleware:
    def __init__(self, app) -> None:
        self.app = app
        self.api_key = os.environ.get("FORESIGHT_API_KEY") or None
        self.max_body = max_body_bytes()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.api_key and path not in OPEN_PATHS and not self._authorized(scope):
            return await _send_json(
                send,
                401,
                {"error": "Authorization: missing or wrong API key; send 'Bearer <key>'"},
                [(b"www-authenticate", b"Bearer")],
            )
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body, too_big = await self._read_body(scope, receive)
            if too_big:
                return await _send_json(
                    send,
                    413,
                    {"error": f"body: request body exceeds the limit of {self.max_body} bytes"},
                )
            receive = self._replay(body, receive)
        return await self.app(scope, receive, self._rewrite_errors(send))

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
                if 400 <= status < 500 and status not in (401, 413):
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
                return await _send_json(send, start["status"], body, headers)
            return await send(message)

        return wrapped
