"""Fast response writing for the batchable JSON endpoints.

BentoML writes an answer by validating it again into its root model (a list of
:class:`~foresight.serving.schemas.ActionPrediction`), dumping that to dicts and those to JSON with
the standard library. :func:`install` replaces that step, for one API method, with
``orjson`` writing the answer objects from their fields: the same JSON document.

Requests keep BentoML's parsing (pydantic's JSON validator): an orjson + numpy parser with
the same checks was measured slower in the server. What makes parsing cheap is sending
fewer JSON numbers: observation histories may come as base64 float32
(:class:`~foresight.serving.schemas.EncodedArray`, the client's default).
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response


def _fields(obj: Any) -> dict[str, Any]:
    if isinstance(obj, BaseModel):
        return obj.__dict__
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> bytes:
    """JSON of response objects: every field, None included (as pydantic's model_dump)."""
    return orjson.dumps(obj, default=_fields)


def install(method: Any) -> None:
    """Write the answers of BentoML API ``method`` with :func:`dumps`. The subclass keeps
    the generated name, so the OpenAPI document stays the same."""
    base = method.output_spec

    class FastOutput(base):
        @classmethod
        async def to_http_response(cls, obj: Any, serde: Any) -> Response:
            return Response(dumps(obj), media_type="application/json")

    FastOutput.__name__, FastOutput.__qualname__ = base.__name__, base.__qualname__
    method.output_spec = FastOutput
