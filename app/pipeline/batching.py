"""Micro-batching: concurrent callers' items are gathered into one call of a batch function.

A ``MicroBatcher`` owns one worker thread. Callers ``submit`` items and wait on the returned future;
the worker takes the first waiting item, then keeps collecting until it has ``max_batch_size``
items or ``max_wait`` has passed since that first item, and calls the batch function once for all.
The queue is bounded: when ``max_queue`` items are already waiting, ``submit`` raises
``OverloadedError`` at once, so a traffic spike costs clients a retry, not the server its memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.pipeline.errors import OverloadedError

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchStats:
    """What one batch call looked like, for metrics."""

    size: int
    seconds: float
    queue_depth: int


class MicroBatcher(Generic[Item, Result]):
    """Runs ``function(items) -> results`` (one result per item, same order) on gathered batches.

    An exception raised by the batch function fails every future of that batch with it.
    """

    def __init__(
        self,
        function: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        name: str,
        max_batch_size: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative, got {max_wait}.")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}.")
        self.name = name
        self._function = function
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[Item, Future[Result]] | None] = queue.Queue(max_queue)
        self._worker = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._closed = False
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, item: Item) -> Future[Result]:
        """Queues one item; raises ``OverloadedError`` when the queue is full."""
        if self._closed:
            raise RuntimeError(f"The {self.name} batcher is closed.")
        future: Future[Result] = Future()
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            raise OverloadedError("The service is at capacity; retry after a short wait.") from None
        return future

    def map(self, items: Sequence[Item], *, timeout: float | None) -> list[Result]:
        """Submits every item and waits for all results (``TimeoutError`` after ``timeout``)."""
        futures = [self.submit(item) for item in items]
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for future in futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(future.result(timeout=remaining))
        return results

    def close(self, timeout: float = 5.0) -> None:
        """Stops the worker after the queued items are done."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._max_wait
            stop = False
            while len(batch) < self._max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    if remaining > 0:
                        entry = self._queue.get(timeout=remaining)
                    else:
                        entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
            self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[tuple[Item, Future[Result]]]) -> None:
        # A caller that gave up (timed out, disconnected) cancelled its future: skip its item.
        live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self._function([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(
                    f"The {self.name} batch function returned {len(results)} results for "
                    f"{len(live)} items."
                )
        except BaseException as error:  # noqa: BLE001 - handed to every waiting caller
            for _, future in live:
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (_, future), result in zip(live, results, strict=True):
            future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(live),
                    seconds=time.perf_counter() - started,
                    queue_depth=self._queue.qsize(),
                )
            )
