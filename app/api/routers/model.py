"""``GET /model``: the loaded model's metadata (``async def``: it only returns what is loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import EngineDep, require_api_key
from app.api.errors import NotReadyError, UnauthorizedError, error_responses
from app.pipeline.metadata import ModelMetadata

router = APIRouter(prefix="/model", tags=["model"], dependencies=[Depends(require_api_key)])


@router.get(
    "",
    response_model=ModelMetadata,
    responses=error_responses(UnauthorizedError, NotReadyError),
)
async def model(engine: EngineDep) -> ModelMetadata:
    """The model's metadata: name, version, embedding size, metric, threshold, calibration."""
    return engine.metadata
