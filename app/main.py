"""The application factory and lifespan: wiring only."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.deps import AdmissionGate
from app.api.errors import register_error_handlers
from app.api.routers import embed, health, metrics, model, verify
from app.device import configure_device
from app.observability import Metrics, MetricsMiddleware, configure_logging
from app.pipeline.batching import BatchStats
from app.pipeline.detect import DetectorConfig
from app.pipeline.engine import EngineConfig, InferenceEngine
from app.pipeline.errors import ModelError
from app.pipeline.pipeline import FacePipeline, PipelineConfig
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

WARMUP_FACE = "warmup_face.jpg"
DESCRIPTION = """
POST two photos to `/verify` (multipart files or base64 JSON) and get whether they show the same
person, the distance, the threshold and the faces compared. `/embed` returns every face with its
embedding; `/verify/embeddings` compares two embeddings.

**Errors** answer `{"detail": sentence, "code": stable_code, "image": "image_a" | "image_b" | null}`
(request validation: FastAPI's 422 shape). **API keys**, when the service has them: send one as
`X-API-Key: <key>` or `Authorization: Bearer <key>`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the FastAPI application; the model is loaded in the lifespan, not here."""
    settings = settings if settings is not None else get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app_metrics = Metrics()
    admission = AdmissionGate(settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            logger.warning("No API keys are configured: the service is open to every client")
        # Any exception here stops the server with a non-zero exit, before it accepts requests;
        # the log line says why in one sentence, above uvicorn's traceback.
        try:
            engine = load_engine(settings, on_batch=app_metrics.observe_batch)
            try:
                warm_up(engine)
            except BaseException:
                engine.close()
                raise
        except Exception as error:
            logger.error("Not starting: %s", error)
            raise
        app_metrics.model.info(
            {"name": engine.metadata.name, "version": str(engine.metadata.version)}
        )
        app.state.engine = engine
        logger.info("Ready")
        try:
            yield
        finally:
            app.state.engine = None
            engine.close()

    app = FastAPI(
        title="faceverify",
        summary="Says whether two photos show the same person.",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.metrics = app_metrics
    app.state.admission = admission
    app_metrics.track_queue_depth(
        lambda: app.state.engine.queue_depth if app.state.engine is not None else 0
    )
    app_metrics.track_in_flight(lambda: admission.in_flight)

    register_error_handlers(app)
    for router in (verify.router, embed.router, model.router, health.router, metrics.router):
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    # Added last, so it is the outermost: it times and counts every response, errors included.
    app.add_middleware(MetricsMiddleware, metrics=app_metrics)
    return app


def load_engine(
    settings: Settings, *, on_batch: Callable[[str, BatchStats], None] | None = None
) -> InferenceEngine:
    """The pipeline on the configured device, behind the engine's batchers."""
    device = configure_device(settings.device)
    logger.info("Inference on %s", device.description)
    pipeline = FacePipeline.from_model_dir(
        settings.model_dir,
        config=PipelineConfig(
            detector=DetectorConfig(
                max_side=settings.detection_max_side,
                min_face_size=settings.min_face_size,
                min_score=settings.min_face_score,
                device=device.tensorflow_name,
            ),
            flip_augmentation=settings.flip_augmentation,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_batch_size=settings.max_batch_size,
        ),
    )
    if pipeline.platt is None:
        logger.warning("The model has no calibration: responses carry no confidence")
    return InferenceEngine(
        pipeline,
        EngineConfig(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
        ),
        on_batch=on_batch,
    )


def warm_up(engine: InferenceEngine) -> None:
    """Embeds a real face once, or raises ``ModelError`` when no face is found.

    The first request then pays no graph tracing, and a detector or model that cannot find and
    embed a face stops the start instead of failing every request.
    """
    started = time.perf_counter()
    image = resources.files("app").joinpath("assets", WARMUP_FACE).read_bytes()
    (faces,) = engine.embed([image], names=[WARMUP_FACE]).faces
    if not faces:
        raise ModelError(
            f"The warm-up found no face in app/assets/{WARMUP_FACE}: the detector or its "
            "settings (FACEVERIFY_MIN_FACE_SIZE, FACEVERIFY_MIN_FACE_SCORE) are broken."
        )
    logger.info("Warm-up found %d face(s) in %.2f s", len(faces), time.perf_counter() - started)
