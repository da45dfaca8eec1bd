"""The placeholder service: it loads the model in its lifespan and reports health."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.pipeline.embed import Embedder
from app.pipeline.errors import MetadataError
from app.settings import Settings


def test_live_and_ready_once_the_model_is_loaded(default_model_dir: Path) -> None:
    app = create_app(Settings(model_dir=default_model_dir))
    with TestClient(app) as client:
        assert client.get("/health/live").json() == {"status": "ok"}
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json() == {"status": "ok"}
        assert "/health/live" in client.get("/openapi.json").json()["paths"]


def test_not_ready_before_start_up(default_model_dir: Path) -> None:
    client = TestClient(create_app(Settings(model_dir=default_model_dir)))  # no lifespan run
    response = client.get("/health/ready")
    assert response.status_code == 503 and response.json() == {"status": "not_ready"}


def test_a_model_that_cannot_load_stops_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path))
    with pytest.raises(MetadataError, match="does not exist"), TestClient(app):
        pass


def test_embedder_checks_chip_shapes(default_model_dir: Path) -> None:
    embedder = Embedder(default_model_dir)
    with pytest.raises(ValueError, match=r"Chips must have shape \[N, 150, 150, 3\]"):
        embedder.embed(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    assert embedder.embed(np.zeros((0, 150, 150, 3), dtype=np.uint8)).shape == (0, 128)
    single = embedder.embed(np.full((150, 150, 3), 100, dtype=np.uint8))
    assert single.shape == (1, 128)
