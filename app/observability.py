"""Logs and Prometheus metrics.

Each application instance owns its own ``CollectorRegistry`` rather than prometheus-client's global
default, so that tests (and a process that builds several apps) never collide on metric names.
Nothing here ever records an image, an embedding or an API key.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import uvicorn.config
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.pipeline.batching import BatchStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FACE_COUNT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
# Requests that match no route are counted under one label, so that scanners probing random
# paths cannot grow the number of time series without bound.
UNMATCHED_ROUTE = "unmatched"


class Metrics:
    """The service's metrics, in one registry per application."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "faceverify_http_requests",
            "HTTP requests, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "faceverify_http_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faces_per_image = Histogram(
            "faceverify_faces_per_image",
            "Faces returned per image by /embed (at most its max_faces).",
            buckets=_FACE_COUNT_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "faceverify_inference_batch_size",
            "Items per model call: images for detect, face chips for embed.",
            ["batcher"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "faceverify_inference_batch_duration_seconds",
            "Time one batched model call took.",
            ["batcher"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "faceverify_inference_queue_depth",
            "Items waiting in the detect and embed queues, read at each scrape.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "faceverify_image_requests_in_flight",
            "Image requests admitted and not yet answered, read at each scrape.",
            registry=self.registry,
        )
        self.model = Info("faceverify_model", "The loaded model.", registry=self.registry)

    def observe_batch(self, batcher: str, stats: BatchStats) -> None:
        """``InferenceEngine``'s ``on_batch`` callback; runs on the batcher's worker thread."""
        self.batch_size.labels(batcher).observe(stats.size)
        self.batch_seconds.labels(batcher).observe(stats.seconds)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def track_in_flight(self, count: Callable[[], float]) -> None:
        self.in_flight.set_function(count)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (``/verify``, not the raw URL)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # Starlette's router stores the matched route in the scope it passes down.
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            labels = (template, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_seconds.labels(*labels).observe(time.perf_counter() - started)


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonLinesFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: str) -> None:
    """Sets the level of the service's loggers and, once, a root handler in the chosen format.

    uvicorn configures only its own loggers; without a root handler the service's lines are lost.
    Each worker process builds its own app, so this runs in every process.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(make_formatter(log_format))
        root.addHandler(handler)
    logging.getLogger("app").setLevel(level.upper())


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's own logging configuration, with our JSON-lines formatter when asked for."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if log_format == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": f"{__name__}.JsonLinesFormatter"}
    return config
