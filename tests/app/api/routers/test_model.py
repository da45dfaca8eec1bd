"""/model returns the loaded model's metadata."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.api.fakes import METADATA


def test_model_metadata(client: TestClient) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    assert response.json() == METADATA.model_dump(mode="json")
