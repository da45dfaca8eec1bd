"""Service latency and throughput under 1, 4 and 16 concurrent clients, against dlib in-process.

1. Starts ``python -m app`` on a free loopback port (or uses ``--url``), then for ``/verify`` (two
   photos) and ``/embed`` (one photo) runs ``--requests`` requests at each concurrency level from
   that many httpx clients (threads), capped at ``--time-cap-s`` per level; prints latency
   p50/p95/p99 and successful requests per second.
2. Runs the same work through face_recognition's pipeline in-process (``DlibPipeline`` from
   ``verification_accuracy.py``: HOG detection, 5-point landmarks, descriptor, distance) on the
   same photos with the same numbers of threads (one dlib model set per thread: dlib's objects
   are not thread-safe), and prints ours/theirs from this same run.
3. Resident memory (RSS of the server and its children) before and after ``--memory-requests``
   ``/embed`` requests from 4 clients.

Photos: in-the-wild CelebA photos from ``../shared/data`` in which dlib finds a face, scaled to a
longer side of 640 px and re-encoded as JPEG (quality 90). They are held in memory only.

    python benchmarks/service_load.py [--requests 64] [--memory-requests 2000] [--url URL --pid PID]

The default run takes about 12-15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.verification_accuracy import DlibPipeline  # noqa: E402
from tests.app.api.server import live_server  # noqa: E402

LEVELS = (1, 4, 16)
LONGER_SIDE = 640


@dataclass
class Run:
    """Latencies (seconds) of the successful calls, the statuses, and the wall time."""

    latencies: list[float]
    statuses: dict[str, int]
    wall_s: float

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else float("nan")


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores (logical), {memory_gib:.0f} GiB"


def load_photos(data_root: Path, count: int, dlib_pipeline: DlibPipeline) -> list[bytes]:
    """``count`` photos in which dlib finds a face, as 640 px JPEGs (both pipelines get these)."""
    folder = data_root / "celeba" / "img_celeba_wild"
    if not folder.is_dir():
        raise SystemExit(
            f"The in-the-wild CelebA photos are not at {folder}; pass --data with the folder "
            "that holds celeba/img_celeba_wild."
        )
    photos: list[bytes] = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        image.thumbnail((LONGER_SIDE, LONGER_SIDE), Image.Resampling.BILINEAR)
        if max(image.size) < LONGER_SIDE:
            continue  # small photos would flatter both pipelines
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        if dlib_pipeline.embed(buffer.getvalue()) is not None:
            photos.append(buffer.getvalue())
        if len(photos) == count:
            return photos
    raise SystemExit(f"Only {len(photos)} usable photos in {folder}; {count} are needed.")


def run_concurrently(
    work: Callable[[int], str], *, clients: int, requests: int, time_cap_s: float
) -> Run:
    """``requests`` calls of ``work(i)`` from ``clients`` threads, stopping at ``time_cap_s``."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + time_cap_s

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                index = next(counter)
            if index >= requests:
                return
            begun = time.perf_counter()
            status = work(index)
            elapsed = time.perf_counter() - begun
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(elapsed)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return Run(latencies, statuses, time.perf_counter() - started)


def http_work(url: str, endpoint: str, photos: Sequence[bytes]) -> Callable[[int], str]:
    local = threading.local()

    def work(index: int) -> str:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        a, b = photos[index % len(photos)], photos[(index + 1) % len(photos)]
        if endpoint == "/verify":
            files = {"image_a": ("a.jpg", a, "image/jpeg"), "image_b": ("b.jpg", b, "image/jpeg")}
        else:
            files = {"image": ("a.jpg", a, "image/jpeg")}
        try:
            return str(local.client.post(endpoint, files=files).status_code)
        except httpx.HTTPError as error:
            return type(error).__name__

    return work


def dlib_work(pipelines: queue.Queue[DlibPipeline], endpoint: str, photos: Sequence[bytes]):
    # dlib's detector, predictor and network are not thread-safe (shared ones crash the process
    # under concurrency), so each concurrent call borrows its own set.
    def work(index: int) -> str:
        dlib_pipeline = pipelines.get()
        try:
            a = dlib_pipeline.embed(photos[index % len(photos)])
            if endpoint == "/embed":
                return "200" if a is not None else "no_face"
            b = dlib_pipeline.embed(photos[(index + 1) % len(photos)])
            if a is None or b is None:
                return "no_face"
            float(np.linalg.norm(a - b))  # the verdict's distance, as face_recognition computes it
            return "200"
        finally:
            pipelines.put(dlib_pipeline)

    return work


def server_rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    members = [process, *process.children(recursive=True)]
    return float(sum(member.memory_info().rss for member in members)) / 2**20


def print_table(results: dict[tuple[str, str, int], Run]) -> None:
    header = (
        f"{'endpoint':<8} | {'clients':>7} | {'who':<4} | {'n ok':>5} | {'p50 ms':>7} | "
        f"{'p95 ms':>7} | {'p99 ms':>7} | {'req/s':>6} | other statuses"
    )
    print(header)
    print("-" * len(header))
    for (endpoint, who, clients), run in results.items():
        others = {status: n for status, n in run.statuses.items() if status != "200"}
        print(
            f"{endpoint:<8} | {clients:>7} | {who:<4} | {len(run.latencies):>5} | "
            f"{run.percentile(50):>7.0f} | {run.percentile(95):>7.0f} | "
            f"{run.percentile(99):>7.0f} | {run.throughput:>6.2f} | {others or '-'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one on loopback")
    parser.add_argument("--pid", type=int, help="the --url server's pid, for the memory figures")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--time-cap-s", type=float, default=120.0, help="per level and side")
    parser.add_argument("--memory-requests", type=int, default=2000)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models/dlib_resnet_v1/1")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    begun = time.perf_counter()

    dlib_pipelines: queue.Queue[DlibPipeline] = queue.Queue()
    for _ in range(max(levels)):
        dlib_pipelines.put(DlibPipeline())
    photos = load_photos(args.data, args.photos, dlib_pipelines.queue[0])
    print(f"machine: {machine()}")
    print(
        f"photos: {len(photos)} in-the-wild CelebA photos, longer side {LONGER_SIDE} px, JPEG 90 "
        f"(mean {statistics.mean(map(len, photos)) / 1024:.0f} KiB); {args.requests} requests per "
        f"level, cap {args.time_cap_s:.0f} s"
    )

    with ExitStack() as stack:
        url, pid = args.url, args.pid
        if url is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "server.log"
            server = stack.enter_context(
                live_server(
                    {
                        "FACEVERIFY_MODEL_DIR": str(args.model_dir),
                        "FACEVERIFY_LOG_LEVEL": "warning",
                        # Room for the 16-client level: the benchmark measures, not refuses.
                        "FACEVERIFY_MAX_QUEUE": "64",
                        "FACEVERIFY_REQUEST_TIMEOUT_S": "120",
                    },
                    log=log,
                )
            )
            url, pid = server.url, server.pid
        print(f"server: {url}")

        results: dict[tuple[str, str, int], Run] = {}
        for endpoint in ("/verify", "/embed"):
            ours_work = http_work(url, endpoint, photos)
            theirs_work = dlib_work(dlib_pipelines, endpoint, photos)
            # Warm-up outside the timings: connections, batch shapes, dlib's allocations.
            run_concurrently(ours_work, clients=2, requests=4, time_cap_s=args.time_cap_s)
            run_concurrently(theirs_work, clients=1, requests=2, time_cap_s=args.time_cap_s)
            for clients in levels:
                for who, work in (("ours", ours_work), ("dlib", theirs_work)):
                    results[(endpoint, who, clients)] = run_concurrently(
                        work, clients=clients, requests=args.requests, time_cap_s=args.time_cap_s
                    )
        print()
        print_table(results)
        print()
        print("ours/dlib (same run): p50 latency ratio, throughput ratio")
        for endpoint in ("/verify", "/embed"):
            for clients in levels:
                ours, theirs = (
                    results[(endpoint, "ours", clients)],
                    results[(endpoint, "dlib", clients)],
                )
                latency = ours.percentile(50) / theirs.percentile(50)
                throughput = ours.throughput / theirs.throughput
                print(
                    f"  {endpoint:<8} {clients:>2} clients: p50 x{latency:.2f}, "
                    f"throughput x{throughput:.2f}"
                )

        if pid is None:
            print("\nmemory: skipped (pass --pid with --url)")
        elif args.memory_requests > 0:
            before = server_rss_mib(pid)
            run = run_concurrently(
                http_work(url, "/embed", photos),
                clients=4,
                requests=args.memory_requests,
                time_cap_s=float("inf"),
            )
            after = server_rss_mib(pid)
            print(
                f"\nmemory: server RSS {before:.0f} MiB before, {after:.0f} MiB after "
                f"{sum(run.statuses.values())} /embed requests from 4 clients "
                f"({after - before:+.0f} MiB; statuses {run.statuses}; {run.wall_s:.0f} s)"
            )
    print(f"\ntotal time: {time.perf_counter() - begun:.0f} s")


if __name__ == "__main__":
    main()
