"""API keys, and the admission gate that turns a flood of requests into 429s."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.deps import AdmissionGate
from app.pipeline.errors import OverloadedError
from tests.app.api.conftest import AppFactory
from tests.app.api.fakes import EMBEDDING_SIZE, FakeEngine, jpeg, pair

KEYS = "first-key,second-key"
PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/verify", {"files": pair()}),
    ("POST", "/embed", {"files": {"image": ("a.jpg", jpeg())}}),
    (
        "POST",
        "/verify/embeddings",
        {"json": {"embedding_a": [0.0] * EMBEDDING_SIZE, "embedding_b": [0.0] * EMBEDDING_SIZE}},
    ),
    ("GET", "/model", {}),
]


@pytest.fixture
def keyed(make_app: AppFactory) -> TestClient:
    return TestClient(make_app(api_keys=KEYS))


def test_open_without_keys(client: TestClient) -> None:
    for method, path, request in PROTECTED:
        assert client.request(method, path, **request).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "first-key"},
        {"X-API-Key": "second-key"},
        {"Authorization": "Bearer second-key"},
        {"Authorization": "bearer first-key"},
    ],
)
def test_a_configured_key_opens_every_protected_route(
    keyed: TestClient, headers: dict[str, str]
) -> None:
    for method, path, request in PROTECTED:
        assert keyed.request(method, path, headers=headers, **request).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "first-ke"},
        {"X-API-Key": "first-key-and-more"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic Zmlyc3Qta2V5"},
        {"Authorization": "first-key"},
    ],
)
def test_a_missing_or_wrong_key_is_401(
    keyed: TestClient, engine: FakeEngine, headers: dict[str, str]
) -> None:
    for method, path, request in PROTECTED:
        response = keyed.request(method, path, headers=headers, **request)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthorized"
        assert "first-key" not in response.text
    assert engine.calls == []


def test_probes_metrics_and_docs_need_no_key(keyed: TestClient) -> None:
    for path in ["/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json"]:
        assert keyed.get(path).status_code == 200, path


def test_the_key_is_checked_before_the_body_is_read(keyed: TestClient) -> None:
    response = keyed.post("/verify", content=b"x" * 100, headers={"content-type": "text/plain"})
    assert response.status_code == 401


def test_admission_gate_counts() -> None:
    gate = AdmissionGate(2)
    gate.enter()
    gate.enter()
    with pytest.raises(OverloadedError):
        gate.enter()
    gate.leave()
    gate.enter()
    assert gate.in_flight == 2
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionGate(0)


def test_overload_gives_429_with_retry_after_then_recovers(
    make_app: AppFactory, engine: FakeEngine
) -> None:
    engine.delay_s = 0.3
    app = make_app(max_queue=2)

    async def flood() -> tuple[list[httpx.Response], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(client.post("/verify", files=pair()) for _ in range(6))
            )
            later = await client.post("/verify", files=pair())
        return list(responses), later

    responses, later = asyncio.run(flood())
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 429, 429, 429, 429]
    for response in responses:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert response.json()["code"] == "overloaded"
    assert later.status_code == 200
    assert len(engine.calls) == 3, "refused requests never reached the engine"
    assert app.state.admission.in_flight == 0
