"""/metrics: Prometheus' text format, labelled by route template, one registry per app."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.pipeline.batching import BatchStats
from tests.app.api.conftest import AppFactory
from tests.app.api.fakes import FakeEngine, jpeg, pair


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_requests_by_route_template_and_status(client: TestClient, engine: FakeEngine) -> None:
    client.post("/verify", files=pair())
    client.post("/verify", files=pair())
    client.post("/verify", content=b"", headers={"content-type": "text/plain"})
    client.get("/no/such/page/12345")
    values = samples(client)

    def requests(route: str, status: str, method: str = "POST") -> float:
        labels = frozenset({("route", route), ("method", method), ("status", status)})
        return values.get(("faceverify_http_requests_total", labels), 0.0)

    assert requests("/verify", "200") == 2
    assert requests("/verify", "415") == 1
    assert requests("unmatched", "404", "GET") == 1
    durations = frozenset({("route", "/verify"), ("method", "POST"), ("status", "200")})
    assert values[("faceverify_http_request_duration_seconds_count", durations)] == 2


def test_faces_per_image_batches_and_queue_depth(make_app: AppFactory, engine: FakeEngine) -> None:
    app = make_app()
    client = TestClient(app)
    engine.faces_per_image = 2
    files = [("images", ("a.jpg", jpeg())), ("images", ("b.jpg", b"no face"))]
    assert client.post("/embed", files=files).status_code == 200
    # The lifespan wires this callback into the engine; here it is called as the engine would.
    app.state.metrics.observe_batch("detect", BatchStats(size=5, seconds=0.2, queue_depth=0))
    values = samples(client)
    assert values[("faceverify_faces_per_image_count", frozenset())] == 2
    assert values[("faceverify_faces_per_image_sum", frozenset())] == 2
    detect = frozenset({("batcher", "detect")})
    assert values[("faceverify_inference_batch_size_count", detect)] == 1
    assert values[("faceverify_inference_batch_size_bucket", detect | {("le", "4.0")})] == 0
    assert values[("faceverify_inference_batch_size_bucket", detect | {("le", "8.0")})] == 1
    # The queue depth gauge reads the engine the lifespan stores; without one it is zero.
    assert values[("faceverify_inference_queue_depth", frozenset())] == 0


def test_each_app_has_its_own_registry(make_app: AppFactory) -> None:
    first, second = TestClient(make_app()), TestClient(make_app())
    first.get("/health/live")
    live = frozenset({("route", "/health/live"), ("method", "GET"), ("status", "200")})
    assert samples(first)[("faceverify_http_requests_total", live)] == 1
    assert ("faceverify_http_requests_total", live) not in samples(second)
