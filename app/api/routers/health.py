"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, Field

router = APIRouter(prefix="/health", tags=["health"])


class HealthResponse(BaseModel):
    status: str = Field(description="`ok` when the probe passes.", examples=["ok"])


@router.get("/live", response_model=HealthResponse)
def live() -> HealthResponse:
    """Whether the process is up and answering."""
    return HealthResponse(status="ok")


@router.get(
    "/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "The model is not loaded yet."}},
)
def ready(request: Request, response: Response) -> HealthResponse:
    """Whether the model is loaded and warmed up, so requests can be served."""
    if getattr(request.app.state, "ready", False):
        return HealthResponse(status="ok")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthResponse(status="not_ready")
