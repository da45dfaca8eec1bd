"""The micro-batcher: gathering, ordering, backpressure, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.pipeline.batching import BatchStats, MicroBatcher
from app.pipeline.errors import OverloadedError


def test_concurrent_items_share_batches_and_keep_their_results() -> None:
    sizes: list[int] = []

    def double(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.02)
        return [item * 2 for item in items]

    batcher = MicroBatcher(double, name="test", max_batch_size=8, max_wait=0.05, max_queue=64)
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda value: batcher.submit(value).result(5), range(32)))
    finally:
        batcher.close()
    assert results == [value * 2 for value in range(32)]
    assert sum(sizes) == 32
    assert max(sizes) <= 8
    assert max(sizes) > 1


def test_a_full_queue_refuses_then_recovers() -> None:
    release = threading.Event()
    stats: list[BatchStats] = []

    def blocked(items: Sequence[int]) -> list[int]:
        release.wait(5)
        return list(items)

    batcher = MicroBatcher(
        blocked, name="test", max_batch_size=1, max_wait=0.0, max_queue=2, on_batch=stats.append
    )
    try:
        first = batcher.submit(0)
        time.sleep(0.05)  # the worker has taken item 0 and is blocked in the batch function
        queued = [batcher.submit(1), batcher.submit(2)]
        with pytest.raises(OverloadedError) as refused:
            batcher.submit(3)
        assert refused.value.code == "overloaded"
        release.set()
        assert [future.result(5) for future in [first, *queued]] == [0, 1, 2]
        assert batcher.submit(4).result(5) == 4
        assert batcher.map([5, 6], timeout=5) == [5, 6]
    finally:
        release.set()
        batcher.close()
    assert [entry.size for entry in stats] == [1, 1, 1, 1, 1, 1]


def test_an_error_reaches_every_caller_of_the_batch() -> None:
    def failing(items: Sequence[int]) -> list[int]:
        raise ValueError("bad batch")

    batcher = MicroBatcher(failing, name="test", max_batch_size=4, max_wait=0.05, max_queue=8)
    try:
        futures = [batcher.submit(value) for value in range(3)]
        for future in futures:
            with pytest.raises(ValueError, match="bad batch"):
                future.result(5)
        # The worker survives a failing batch.
        with pytest.raises(ValueError):
            batcher.submit(9).result(5)
    finally:
        batcher.close()


def test_cancelled_items_are_skipped() -> None:
    seen: list[int] = []
    release = threading.Event()

    def record(items: Sequence[int]) -> list[int]:
        release.wait(5)
        seen.extend(items)
        return list(items)

    batcher = MicroBatcher(record, name="test", max_batch_size=1, max_wait=0.0, max_queue=8)
    try:
        batcher.submit(1)
        time.sleep(0.05)
        abandoned = batcher.submit(2)
        assert abandoned.cancel()
        kept = batcher.submit(3)
        release.set()
        assert kept.result(5) == 3
    finally:
        release.set()
        batcher.close()
    assert seen == [1, 3]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(list, name="x", max_batch_size=0, max_wait=0.0, max_queue=1)
    with pytest.raises(ValueError, match="max_queue"):
        MicroBatcher(list, name="x", max_batch_size=1, max_wait=0.0, max_queue=0)
