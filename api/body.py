"""Request bodies and error responses, checked and declared in one place.

``BodyCheckedRequest`` (the app's request class) refuses a JSON or MessagePack body
that is not valid UTF-8 or nests deeper than ``SYNCLINE_MAX_JSON_DEPTH`` with a 400
``invalid_json`` before any handler reads it (the decoder's RecursionError and
UnicodeDecodeError used to surface as 500s). ``declare_errors`` adds the gateway's
error body (``{code, message, details?}``) to every route's OpenAPI responses, so the
schema describes the 4xx/5xx answers the gateway really gives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.openapi.datastructures import ResponseSpec

from syncline.engine.events import POSITION_MAX

from .errors import InvalidJson

DEFAULT_MAX_DEPTH = 64


@dataclass
class ErrorBody:
    """Every error the gateway answers: a stable ``code``, a human ``message``, optional ``details``."""

    code: str
    message: str
    details: dict[str, Any] | None = None


_DESCRIPTIONS = {
    400: "Invalid request (a stable `code` says what: invalid, invalid_json, invalid_stream, clock_skew...)",
    401: "Missing, expired or invalid token",
    403: "The token does not allow this",
    404: "Not found",
    408: "Stale",
    409: "Version conflict",
    413: "Payload too large",
    422: "Idempotency key reused for another request",
    429: "Rate limited",
    500: "Internal error (no internal detail is given)",
    503: "The event store is unavailable",
}
ERROR_RESPONSES = {status: ResponseSpec(data_container=ErrorBody, description=text, generate_examples=False)
                   for status, text in _DESCRIPTIONS.items()}


def declare_errors(handler: Any) -> None:
    """Declare the error responses on a route handler (its own declarations win)."""
    handler.responses = {**ERROR_RESPONSES, **(handler.responses or {})}


def declare_binary_chunks(app: Any) -> None:
    """Two corrections to the generated OpenAPI schema. ``GET /v1/snapshots`` answers its
    manifest in JSON or, with ``?chunk=``, the chunk's bytes: declare both media types of
    its 200 (a handler declares one). And bounds are written as floats, which turns
    2^63 - 1 into 2^63: write the exact integer."""
    from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Schema

    paths = app.openapi_schema.paths or {}
    for item in paths.values():
        for method in ("get", "post", "put", "delete"):
            operation = getattr(item, method, None)
            for param in (operation.parameters or ()) if operation is not None else ():
                sch = getattr(param, "schema", None)
                if isinstance(sch, Schema) and sch.maximum == float(POSITION_MAX):
                    sch.maximum = POSITION_MAX
    item = paths.get("/v1/snapshots")
    op = item.get if item is not None else None
    ok = op.responses.get("200") if op is not None and op.responses else None
    if ok is not None and not isinstance(ok, dict) and getattr(ok, "content", None) is not None:
        ok.content["application/octet-stream"] = OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in v)
    return True


class BodyCheckedRequest(Request):
    def _max_depth(self) -> int:
        gw = self.app.state.get("gateway")
        return gw.settings.max_json_depth if gw is not None else DEFAULT_MAX_DEPTH

    def _refused(self, code: str) -> None:
        gw = self.app.state.get("gateway")
        if gw is not None:
            gw.metrics.bodies_refused.labels(code).inc()

    async def _checked(self, decode: Any, what: str) -> Any:
        try:
            value = await decode()
        except RecursionError:
            self._refused("too_deep")
            raise InvalidJson(f"the {what} body nests too deeply", reason="too_deep") from None
        except UnicodeDecodeError:
            self._refused("invalid_utf8")
            raise InvalidJson(f"the {what} body is not valid UTF-8", reason="invalid_utf8") from None
        limit = self._max_depth()
        if not _depth_ok(value, limit):
            self._refused("too_deep")
            raise InvalidJson(f"the {what} body nests deeper than {limit} levels", reason="too_deep", limit=limit)
        return value

    async def json(self) -> Any:
        return await self._checked(super().json, "JSON")

    async def msgpack(self) -> Any:
        return await self._checked(super().msgpack, "MessagePack")
