"""The service's settings: environment variables prefixed ``FACEVERIFY_`` (or a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All run-time configuration, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="FACEVERIFY_", env_file=".env", extra="ignore")

    model_dir: Path = Field(
        default=Path("models/dlib_resnet_v1/1"),
        description="An exported model: a SavedModel plus metadata.json.",
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(default=1, ge=1, description="Server processes; each loads the model.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_batch_size: int = Field(
        default=64, ge=1, description="Most face chips sent to the model in one call."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
