"""Liveness and readiness probes.

They are ``async def`` because they never block: on the event loop they answer at once even when
every thread of the pool is busy with inference, so a loaded service is not mistaken for a dead one.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep
from app.api.errors import NotReadyError, error_responses
from app.api.schemas import HealthResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthResponse)
async def live() -> HealthResponse:
    """Whether the process is up and answering."""
    return HealthResponse(status="ok")


@router.get("/ready", response_model=HealthResponse, responses=error_responses(NotReadyError))
async def ready(engine: EngineDep) -> HealthResponse:
    """Whether the model is loaded and a warm-up inference on a real face passed."""
    # Resolving the engine is the check: it exists only once the warm-up has passed.
    return HealthResponse(status="ok")
