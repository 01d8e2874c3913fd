"""Each service's HTTP surface: health, readiness, metrics, AsyncAPI, and its own routes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def build_app(service: Any, routers: list[APIRouter]) -> FastAPI:
    """`service` is the running ServiceRuntime; routes reach it as request.app.state.runtime."""
    app = FastAPI(title=f"Caseflow {service.name}", version="1.0", docs_url="/docs", openapi_url="/openapi.json")
    app.state.runtime = service
    app.state.verifier = service.verifier
    app.state.pool = service.pool

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Say what is wrong, never echo the input back (it may be personal data).
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok", "service": service.name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await service.readiness()
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        await service.observe_outbox()
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        return JSONResponse(service.asyncapi())

    for router in routers:
        app.include_router(router)
    return app


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
