"""Liveness and readiness with a fake engine; the real warm-up is tested in test_service.py."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}
