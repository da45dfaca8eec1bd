"""The application factory and lifespan: wiring only."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI

from app.api.routers import health
from app.pipeline.embed import Embedder
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def _configure_logging(level: str) -> None:
    # uvicorn configures only its own loggers; without this the service's own lines are lost.
    # Each worker process builds its own app, so this runs in every process.
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the FastAPI application; the model is loaded in the lifespan, not here."""
    settings = settings if settings is not None else get_settings()
    _configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = False
        # A model that cannot load raises here, which stops the server with a non-zero exit.
        embedder = Embedder(settings.model_dir, max_batch_size=settings.max_batch_size)
        # One warm-up inference so the first request does not pay for graph tracing.
        embedder.embed(np.zeros((1, *embedder.input_shape), dtype=np.uint8))
        app.state.embedder = embedder
        app.state.ready = True
        logger.info("Model warmed up; ready")
        yield
        app.state.ready = False

    app = FastAPI(
        title="faceverify",
        summary="Says whether two photos show the same person.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ready = False
    app.include_router(health.router)
    return app
