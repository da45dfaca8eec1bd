"""``GET /metrics``: Prometheus' text format.

``async def``: rendering the registry takes well under a millisecond, and a scrape must not wait
behind inference for a thread.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus' text format."}},
)
async def metrics(registry: MetricsDep) -> Response:
    """Request counts and latencies, faces per image, batch sizes and latency, queue depth."""
    return Response(registry.render(), media_type=registry.content_type)
