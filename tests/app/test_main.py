"""create_app and the lifespan: wiring, OpenAPI, CORS, start-up failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import main
from app.device import configure_device
from app.main import create_app, load_engine, warm_up
from app.pipeline.engine import EmbedOutcome
from app.pipeline.errors import MetadataError, ModelError
from app.pipeline.pipeline import PipelineConfig
from app.settings import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_openapi_documents_routes_bodies_and_errors() -> None:
    schema = TestClient(create_app(settings())).get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/verify",
        "/verify/embeddings",
        "/embed",
        "/model",
        "/health/live",
        "/health/ready",
        "/metrics",
    }
    verify = schema["paths"]["/verify"]["post"]
    assert verify["description"]
    assert set(verify["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    multipart = verify["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image_a", "image_b", "threshold", "face_policy", "detect"} <= set(
        multipart["properties"]
    )
    assert set(verify["responses"]) == {
        "200", "400", "401", "413", "415", "422", "429", "503", "504"
    }  # fmt: skip
    examples = verify["responses"]["422"]["content"]["application/json"]["examples"]
    assert set(examples) == {"no_face", "multiple_faces", "validation"}
    assert "Retry-After" in verify["responses"]["429"]["headers"]
    embed = schema["paths"]["/embed"]["post"]
    assert {"image", "images", "max_faces", "detect"} <= set(
        embed["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    )
    assert "ErrorResponse" in schema["components"]["schemas"]
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])
    assert TestClient(create_app(settings())).get("/docs").status_code == 200


def test_cors_is_off_unless_configured() -> None:
    request = {
        "headers": {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    }
    closed = TestClient(create_app(settings())).options("/verify", **request)
    assert "access-control-allow-origin" not in closed.headers
    app = create_app(settings(cors_origins="https://example.org"))
    opened = TestClient(app).options("/verify", **request)
    assert opened.headers["access-control-allow-origin"] == "https://example.org"


def test_a_model_that_cannot_load_stops_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings(model_dir=tmp_path))
    with pytest.raises(MetadataError, match="does not exist"), TestClient(app):
        pass
    assert f"Not starting: {tmp_path}/metadata.json does not exist" in caplog.text


class _FacelessEngine:
    def embed(self, images: list[bytes], *, names: list[str]) -> EmbedOutcome:
        assert images[0][:2] == b"\xff\xd8", "the warm-up sends the committed JPEG"
        return EmbedOutcome(faces=[[]])


def test_a_warm_up_without_a_face_stops_start_up() -> None:
    with pytest.raises(ModelError, match="found no face"):
        warm_up(_FacelessEngine())  # type: ignore[arg-type]


def test_settings_reach_the_pipeline_and_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}

    class _Pipeline:
        platt = None

        def detect(self, images: list[Any]) -> list[Any]:
            return [[] for _ in images]

        @classmethod
        def from_model_dir(cls, model_dir: Path, *, config: PipelineConfig) -> _Pipeline:
            captured.update(model_dir=model_dir, config=config)
            return cls()

    monkeypatch.setattr(main, "FacePipeline", _Pipeline)
    engine = load_engine(
        settings(
            model_dir="somewhere/1",
            device="cpu",
            max_batch_size=8,
            max_wait_ms=20,
            max_queue=9,
            request_timeout_s=3,
            max_image_bytes=1234,
            max_image_pixels=5678,
            min_face_size=40,
            min_face_score=0.8,
            detection_max_side=320,
            flip_augmentation=True,
        )
    )
    try:
        assert (
            engine.config.max_batch_size,
            engine.config.max_wait_ms,
            engine.config.max_queue,
            engine.config.request_timeout_s,
        ) == (8, 20, 9, 3)
    finally:
        engine.close()
    config: PipelineConfig = captured["config"]
    assert captured["model_dir"] == Path("somewhere/1")
    assert (config.max_bytes, config.max_pixels, config.max_batch_size) == (1234, 5678, 8)
    assert config.flip_augmentation is True
    detector = config.detector
    assert (detector.max_side, detector.min_face_size, detector.min_score) == (320, 40, 0.8)
    assert detector.device == "CPU:0"


def test_asking_for_a_gpu_without_one_fails() -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this host has a GPU")
    with pytest.raises(RuntimeError, match="sees no GPU"):
        configure_device("gpu")
    assert configure_device("auto").description == "CPU"
