"""Body limits (declared and streamed) and base64 decoding."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.uploads import JSON, MULTIPART, body_limit, decode_base64
from app.pipeline.errors import InvalidImageError
from tests.app.api.conftest import AppFactory
from tests.app.api.fakes import FakeEngine, pair

LIMIT_BYTES = 2000


def test_body_limits_allow_for_base64() -> None:
    multipart = body_limit(images=2, max_image_bytes=3 * 1024, encoding=MULTIPART)
    json = body_limit(images=2, max_image_bytes=3 * 1024, encoding=JSON)
    base64_text = 2 * 4 * 1024  # two images, 4 characters per 3 bytes
    line_breaks = 2 * 2 * 54  # two images, CR LF after each 76 of their 4096 characters
    assert json - multipart == base64_text + line_breaks - 2 * 3 * 1024


@pytest.mark.parametrize("path", ["/verify", "/embed"])
def test_a_declared_length_over_the_limit_is_refused(
    make_app: AppFactory, engine: FakeEngine, path: str
) -> None:
    client = TestClient(make_app(max_image_bytes=LIMIT_BYTES, max_embed_images=2))
    big = b"x" * (70 * 1024)  # over two images' worth plus the slack for headers
    files = pair(big, b"y") if path == "/verify" else {"image": ("a.jpg", big)}
    response = client.post(path, files=files)
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "payload_too_large" and body["image"] is None
    assert "larger than this endpoint accepts" in body["detail"]
    assert engine.calls == []


def test_the_body_is_not_read_when_its_declared_length_is_too_large(
    make_app: AppFactory,
) -> None:
    app = make_app(max_image_bytes=LIMIT_BYTES)
    status, reads = asyncio.run(_post_raw(app, declared_length=10**9, chunks=[b"x" * 100]))
    assert status == 413
    assert reads == 0


def test_a_streamed_body_is_cut_off_at_the_limit(make_app: AppFactory) -> None:
    app = make_app(max_image_bytes=LIMIT_BYTES)
    part = b'--b\r\nContent-Disposition: form-data; name="image_a"; filename="a.jpg"\r\n\r\n'
    chunks = [part] + [b"x" * 16 * 1024] * 64  # 1 MiB without a Content-Length
    status, reads = asyncio.run(_post_raw(app, declared_length=None, chunks=chunks))
    assert status == 413
    assert reads < len(chunks), "reading stopped once the limit was passed"


def test_a_streamed_json_body_within_the_limit_is_read(
    make_app: AppFactory, engine: FakeEngine
) -> None:
    client = TestClient(make_app())
    encoded = base64.b64encode(b"image bytes").decode()

    def body() -> Iterator[bytes]:
        yield b'{"image_a": "' + encoded.encode()
        yield b'", "image_b": "' + encoded.encode() + b'"}'

    response = client.post("/verify", content=body(), headers={"content-type": JSON})
    assert response.status_code == 200
    assert engine.calls[0][1]["image_a"] == b"image bytes"


def test_decode_base64() -> None:
    data = bytes(range(256))
    encoded = base64.b64encode(data).decode()
    assert decode_base64(encoded, image="image_a") == data
    assert decode_base64("data:image/png;base64," + encoded, image="image_a") == data
    assert decode_base64(" \n".join([encoded[:10], encoded[10:]]), image="image_a") == data
    for invalid in ["abc", "ab$=", base64.urlsafe_b64encode(b"\xfb\xff").decode()]:
        with pytest.raises(InvalidImageError) as raised:
            decode_base64(invalid, image="image_b")
        assert raised.value.image == "image_b"


async def _post_raw(
    app: FastAPI, *, declared_length: int | None, chunks: list[bytes]
) -> tuple[int, int]:
    """POSTs a multipart body to /verify over raw ASGI; returns the status and the reads."""
    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    if declared_length is not None:
        headers.append((b"content-length", str(declared_length).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/verify",
        "raw_path": b"/verify",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    reads = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        if reads == len(chunks):
            return {"type": "http.disconnect"}
        reads += 1
        return {"type": "http.request", "body": chunks[reads - 1], "more_body": reads < len(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status, reads
