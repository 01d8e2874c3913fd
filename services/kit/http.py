"""Each service's HTTP surface: health, readiness, metrics, AsyncAPI, and its own routes.

The edge every route shares: a request body larger than CASEFLOW_HTTP_MAX_BODY_BYTES
answers 413 (a route that takes uploads raises its own limit with `allow_body`); an address
that is not UTF-8 answers 400; a body that is not JSON, or not sent as JSON, answers 422 or
415; a field that breaks its type (services/kit/inputs.py) answers 422 naming it. Every
refusal is JSON with a `detail` a person can read, and never quotes the input back."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import unquote_to_bytes

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError

from contracts import cloudevents
from contracts.envelope import Event
from services.kit import logs

log = logs.get("caseflow.http")

_MAX_BODY = "caseflow.max_body_bytes"


class Refusal(BaseModel):
    """Every 4xx answer: what is wrong, for a person to read; `problems` names each field."""

    model_config = ConfigDict(extra="allow")

    detail: str | dict | list = ...


# Documented on every route, so clients (and schemathesis) know the refusals to expect.
REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Refusal, "description": "The request cannot be read (an address that is not UTF-8)"},
    401: {"model": Refusal, "description": "No valid signed token"},
    403: {"model": Refusal, "description": "The caller's role may not do this"},
    404: {"model": Refusal, "description": "Not found, or outside the caller's district or schools"},
    409: {"model": Refusal, "description": "Conflicts with the current state"},
    413: {"model": Refusal, "description": "The body is larger than the limit"},
    415: {"model": Refusal, "description": "The body is not sent as JSON"},
    422: {"model": Refusal, "description": "A field, or the body, breaks a rule; `problems` says which"},
}


def _declared_query(dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared_query(sub)
    return names


async def only_known_query_parameters(request: Request) -> None:
    """A query parameter the route does not take is refused (422), never ignored: a misspelt
    filter (`?shcool_id=`) would otherwise answer the unfiltered list as if it were the
    filtered one. The message names what the route takes, never what was sent."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    declared = _declared_query(dependant)
    if set(request.query_params.keys()) - declared:
        takes = ", ".join(sorted(declared)) if declared else "none"
        raise HTTPException(422, f"an unknown query parameter: this route takes {takes}")


def build_app(service: Any, routers: list[APIRouter], state: dict[str, Any] | None = None) -> FastAPI:
    """`service` is the running ServiceRuntime; routes reach it as request.app.state.runtime,
    and each of `state` (the service's http_state) as request.app.state.<name>."""
    # /docs and /redoc load Swagger UI and ReDoc from the installed fastapi-offline package,
    # not a CDN: they work on a machine without internet.
    app = FastAPIOffline(title=f"Caseflow {service.name}", version="1.0", docs_url="/docs", redoc_url="/redoc",
                         openapi_url="/openapi.json", static_url="/docs-assets",
                         dependencies=[Depends(only_known_query_parameters)])
    app.state.runtime = service
    app.state.verifier = service.verifier
    app.state.pool = service.pool
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    app.add_middleware(RequestEdge, max_body_bytes=service.settings.http_max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refusal_for(request, exc.errors(), exc.body)

    # The last line: a value the database refuses is the request's fault, never a 500. It
    # should never be what answers (each route's types refuse first), so it is logged.
    async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("input reached the database unvalidated", method=request.method, route=_route(request),
                    error=type(exc).__name__)
        return JSONResponse({"detail": "a value in the request cannot be stored (a character or a number out of "
                                       "range); correct it and send the request again"}, status_code=422)

    for kind in (asyncpg.DataError, UnicodeEncodeError):
        app.add_exception_handler(kind, _unstorable)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok", "service": service.name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await service.readiness()
        ready = all(c["ok"] for c in checks.values())
        # Which process answers (a port reused by another process must not pass for this one).
        return JSONResponse({"ready": ready, "service": service.name, "pid": os.getpid(), "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        await service.observe_outbox()
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        return JSONResponse(service.asyncapi())

    for router in routers:
        app.include_router(router, responses=REFUSALS)
    return app


def refusal_for(request: Request, errors: list[dict], body: Any = None) -> JSONResponse:
    """The 4xx for a request whose fields break their types: 415 for a body not sent as
    JSON, 422 for one that is not JSON, else 422 listing each field and what is wrong with
    it (never its value: it may be personal data)."""
    if isinstance(body, bytes | bytearray) and any(e["loc"][:1] == ("body",) for e in errors):
        return JSONResponse({"detail": "send the body as JSON, with the header Content-Type: application/json"},
                            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid is not None:
        where = invalid["loc"][1] if len(invalid["loc"]) > 1 else None
        reason = (invalid.get("ctx") or {}).get("error", "")
        return JSONResponse({"detail": f"the body is not valid JSON ({reason}"
                                       + (f" at character {where}" if isinstance(where, int) else "") + ")"},
                            status_code=422)
    problems = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in errors]
    return JSONResponse({"detail": "invalid request: " + "; ".join(f"{p['field']} {p['problem']}" for p in problems),
                         "problems": problems}, status_code=422)


def checked_event(event_type: type[Event], *, fields: dict[str, str] | None = None, **values: Any) -> Event:
    """The event a request makes, checked as its consumers will read it (encoded, then
    decoded with the same contract) before the request is answered: one they would refuse
    answers 422 now instead of being accepted and dead-lettered later. `fields` names the
    request field each event field comes from, for the answer."""
    try:
        event = event_type(**values)
        event_type.model_validate_json(cloudevents.encode(event))
    except ValidationError as e:
        fields = fields or {}
        errors = []
        for err in e.errors():
            name = err["loc"][0] if err["loc"] else next(
                (f for f in values if str(err.get("msg", "")).startswith(f"Value error, {f} ")), None)
            errors.append({"loc": ("body", fields.get(name, name)) if name else ("body",), "msg": err["msg"],
                           "type": err["type"]})
        raise RequestValidationError(errors) from None
    return event


def allow_body(request: Request, max_bytes: int) -> None:
    """Let this route read a body up to `max_bytes` (an upload), instead of the JSON limit;
    call it before reading the body."""
    request.scope[_MAX_BODY] = max_bytes


def correlation_id(request: Request) -> str | None:
    """The caller's X-Request-ID, when it is a sensible id (printable, at most 128
    characters); else None and the event gets one of its own."""
    value = request.headers.get("x-request-id")
    if value and len(value) <= 128 and value.isprintable() and value.isascii():
        return value
    return None


class RequestEdge:
    """ASGI middleware: refuses an address that is not UTF-8 (400) and a body larger than
    the route allows (413, counted as it arrives, so a body without Content-Length is
    stopped too)."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            unquote_to_bytes(scope.get("raw_path") or b"").decode("utf-8")
            unquote_to_bytes(scope.get("query_string") or b"").decode("utf-8")
        except UnicodeDecodeError:
            response = JSONResponse({"detail": "the address is not valid UTF-8: percent-encode text as UTF-8"},
                                    status_code=status.HTTP_400_BAD_REQUEST)
            return await response(scope, receive, send)
        scope.setdefault(_MAX_BODY, self.max_body_bytes)
        received = 0

        def too_large(limit: int) -> HTTPException:
            return HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                 f"the body is larger than {limit:,} bytes, the most this request takes")

        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)

        async def counted_receive():
            nonlocal received
            limit = scope[_MAX_BODY]
            if received == 0 and declared is not None and declared.isdigit() and int(declared) > limit:
                raise too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, counted_receive, send)


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", request.url.path)


class CachedCheck:
    """Readiness probes hit often; check the dependencies at most once a second."""

    def __init__(self, check, ttl: float = 1.0) -> None:
        self._check = check
        self._ttl = ttl
        self._at = 0.0
        self._value: dict | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> dict:
        async with self._lock:
            if self._value is None or time.monotonic() - self._at > self._ttl:
                self._value = await self._check()
                self._at = time.monotonic()
            return self._value
