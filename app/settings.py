"""The service's settings: environment variables prefixed ``FACEVERIFY_`` (or a ``.env`` file).

Every variable is documented in ``.env.example`` at the repository root and in the README.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.pipeline.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from app.pipeline.detect import DetectorConfig
from app.pipeline.engine import EngineConfig
from app.pipeline.pipeline import PipelineConfig

ENV_PREFIX = "FACEVERIFY_"


class Settings(BaseSettings):
    """All run-time configuration, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        validate_default=True,
        # An empty variable (`FACEVERIFY_THRESHOLD=`, as in .env.example) means "the default".
        env_ignore_empty=True,
    )

    # The model and where it runs.
    model_dir: Path = Field(
        default=Path("models/dlib_resnet_v1/1"),
        description="An exported model: a SavedModel plus metadata.json.",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="`auto` uses a GPU when TensorFlow sees one; `gpu` refuses to start without.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Distance threshold for every request; unset uses the model's calibrated one.",
    )
    flip_augmentation: bool | None = Field(
        default=None,
        description="Embed each face and its mirror image; unset follows the model's metadata.",
    )

    # Batching and backpressure.
    max_batch_size: int = Field(
        default=PipelineConfig.max_batch_size,
        ge=1,
        description="Most images (detection) or faces (embedding) per call.",
    )
    max_wait_ms: float = Field(
        default=EngineConfig.max_wait_ms,
        ge=0,
        le=1000,
        description="How long a batch waits for more work after its first item, in milliseconds.",
    )
    max_queue: int = Field(
        default=EngineConfig.max_queue,
        ge=1,
        description=(
            "Most image requests admitted at once, and most items waiting in each batcher; "
            "beyond either the answer is 429."
        ),
    )

    # Limits.
    max_image_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1, description="Largest accepted image file, in bytes."
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest accepted image, in pixels (width x height).",
    )
    max_embed_images: int = Field(
        default=16, ge=1, description="Most images in one /embed request."
    )
    request_timeout_s: float = Field(
        default=EngineConfig.request_timeout_s,
        gt=0,
        description="Longest time one request may take before a 504.",
    )
    min_face_size: int = Field(
        default=DetectorConfig.min_face_size,
        ge=1,
        description="Smallest face found, longer box side in pixels.",
    )
    min_face_score: float = Field(
        default=DetectorConfig.min_score,
        ge=0,
        le=1,
        description="Lowest detector confidence for a face (0.8 is MTCNN's own last-stage cut).",
    )
    detection_max_side: int = Field(
        default=DetectorConfig.max_side,
        ge=24,
        description="Photos are scaled to at most this longer side for detection.",
    )

    # Access.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "API keys, comma-separated or a JSON list; empty runs the service open. Clients send "
            "one in `X-API-Key` or `Authorization: Bearer`."
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated or a JSON list; empty: CORS off.",
    )

    # Server and logs.
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(default=1, ge=1, description="Server processes; each loads the model.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json` writes one JSON object per line."
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Environment variables are strings: accept "a,b" as well as '["a", "b"]'.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(
                    "must be a JSON list of strings or comma-separated values"
                ) from None
        return [item.strip() for item in text.split(",") if item.strip()]

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value().strip() for key in keys):
            raise ValueError("API keys must not be empty or blank")
        return keys

    @field_validator("log_level", "log_format", "device", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def describe_settings_error(error: ValidationError) -> str:
    """One line per invalid setting, named as its environment variable."""
    lines = ["Invalid settings:"]
    for item in error.errors(include_url=False, include_input=False):
        name = ENV_PREFIX + "_".join(str(part) for part in item["loc"][:1]).upper()
        lines.append(f"  {name}: {item['msg']}")
    return "\n".join(lines)


@lru_cache
def get_settings() -> Settings:
    return Settings()
