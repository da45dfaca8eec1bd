"""JSON-lines logs and uvicorn's log configuration."""

from __future__ import annotations

import json
import logging
import sys

from app.observability import JsonLinesFormatter, uvicorn_log_config


def test_json_lines() -> None:
    formatter = JsonLinesFormatter()
    record = logging.LogRecord("app.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    entry = json.loads(formatter.format(record))
    assert entry["level"] == "warning" and entry["logger"] == "app.x"
    assert entry["message"] == "hello world" and entry["time"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(formatter.format(record))["exception"]


def test_uvicorn_log_config() -> None:
    json_config = uvicorn_log_config("json")
    assert {formatter["()"] for formatter in json_config["formatters"].values()} == {
        "app.observability.JsonLinesFormatter"
    }
    assert "fmt" in uvicorn_log_config("text")["formatters"]["default"]
