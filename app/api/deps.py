"""Dependencies, as ``Annotated`` aliases; tests swap ``get_engine`` with ``dependency_overrides``.

These dependencies are ``async def`` although they do no I/O: FastAPI runs plain ``def``
dependencies in its thread pool, and when every thread is busy waiting for the model a request
would queue there before it could even be refused. On the event loop, refusals (401, 429, 503) are
answered at once however busy the model is.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import NotReadyError, UnauthorizedError
from app.observability import Metrics
from app.pipeline.engine import InferenceEngine
from app.pipeline.errors import OverloadedError
from app.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_engine(request: Request) -> InferenceEngine:
    """The engine, once the lifespan has loaded the model and a warm-up inference passed."""
    engine: InferenceEngine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReadyError("The model is still loading; retry shortly.")
    return engine


EngineDep = Annotated[InferenceEngine, Depends(get_engine)]


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key, when the service is configured with keys.",
)
_bearer = HTTPBearer(
    auto_error=False,
    description="The same API key as a bearer token: `Authorization: Bearer <key>`.",
)


async def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Lets a request through when no key is configured or it carries one of the keys."""
    if not settings.api_keys:
        return
    offered = api_key if api_key is not None else (bearer.credentials if bearer else None)
    if offered is None or not _is_known_key(offered, settings):
        raise UnauthorizedError(
            "A valid API key is required: send it in the X-API-Key header or as "
            "'Authorization: Bearer <key>'."
        )


def _is_known_key(offered: str, settings: Settings) -> bool:
    # Every configured key is compared, each in constant time, so the response time says neither
    # which key nor how much of one matched.
    candidate = offered.encode()
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(candidate, key.get_secret_value().encode())
    return matched


class AdmissionGate:
    """Counts image requests in flight and refuses new ones beyond ``limit``.

    The engine's queues bound the work waiting for the model, but a request holds its images in
    memory from the moment its body is read, and may wait for a thread before it reaches the
    engine. The gate bounds those requests too. It is used from the event loop only, so a plain
    counter is enough.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"The admission limit must be at least 1, got {limit}.")
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise OverloadedError("The service is at capacity; retry after a short wait.")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


async def admit(request: Request) -> AsyncIterator[None]:
    """Holds a place at the admission gate for the whole request (429 when there is none)."""
    gate: AdmissionGate = request.app.state.admission
    gate.enter()
    try:
        yield
    finally:
        gate.leave()
