"""Fixtures for the API tests: the app with a fake engine.

The app is built with ``create_app(settings)`` and its engine dependency overridden; the lifespan is
never run (``TestClient`` outside a ``with`` block), so nothing here touches TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.deps import get_engine
from app.main import create_app
from app.settings import Settings
from tests.app.api.fakes import FakeEngine

AppFactory = Callable[..., FastAPI]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def default_settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def make_app(engine: FakeEngine) -> AppFactory:
    """``make_app(**settings)``: an app with the fake engine; the lifespan does not run."""

    async def fake_engine() -> FakeEngine:
        return engine

    def build(**settings: Any) -> FastAPI:
        app = create_app(Settings(_env_file=None, **settings))  # type: ignore[call-arg]
        app.dependency_overrides[get_engine] = fake_engine
        return app

    return build


@pytest.fixture
def client(make_app: AppFactory) -> TestClient:
    return TestClient(make_app())
