"""A real ``python -m app`` server on loopback, for the load and fault tests.

The server runs in its own process group so that stopping it also stops anything it started; it
is always stopped, also when the start fails or a test raises.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[3]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port the kernel has just handed out on loopback (free unless raced, which is rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class LiveServer:
    url: str
    port: int
    pid: int
    log: Path


def _die_with_parent() -> None:
    # Runs in the child before exec. A parent killed hard (a segfault, SIGKILL) runs no finally
    # block; on Linux the kernel then sends the server SIGTERM instead of leaving it orphaned.
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # SIGTERM lets uvicorn run the lifespan's shutdown; SIGKILL if it does not finish in time.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextmanager
def live_server(
    settings: Mapping[str, str], *, log: Path, start_timeout_s: float = 90.0
) -> Iterator[LiveServer]:
    """Starts the service with ``settings`` (``FACEVERIFY_*`` variables) and waits until ready."""
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        # The test decides every setting; none leak in from the caller's environment.
        if not name.startswith("FACEVERIFY_")
    }
    env.update(settings)
    env.update({"FACEVERIFY_HOST": LOOPBACK, "FACEVERIFY_PORT": str(port)})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    url = f"http://{LOOPBACK}:{port}"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"The server exited with {process.returncode} before it was ready:\n"
                    + log.read_text(errors="replace")[-4000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"The server was not ready within {start_timeout_s:.0f} s.")
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield LiveServer(url=url, port=port, pid=process.pid, log=log)
    finally:
        _stop(process)
