"""Dynamic batching for the HTTP server: concurrent requests' items merged into backend calls, results split back.

One ``DynamicBatcher`` per encoder (texts, images) runs on the server's event loop. A request is admitted first
(``admit``: the bounded queue says yes or raises ``QueueFull`` before the request decodes anything, so memory stays
bounded), then ``submit``s its items and awaits its own rows. The batcher's loop takes queued requests in arrival
order until ``max_batch`` items, runs them as ONE blocking backend call in a worker thread, and hands each request
exactly its slice of the result: row i of a request's answer always belongs to its item i. A request of more than
``max_batch`` items runs as several calls of at most ``max_batch``: with batchers sharing one worker thread (first
in, first out), another batcher's call waits for one call, never for a whole large request.

When to run: at once when nothing else is on its way (a lone request never waits), otherwise up to ``max_wait_s``
after the oldest queued request while requests that have already reached the server (``arrival``) are still being
read or decoded, or until ``max_batch`` items are queued. With ``batching=False`` every request is its own call
(the baseline the load benchmark compares against).

Isolation: if a merged call raises, each request of it is rerun alone, so one request whose items break the backend
fails only itself. Per-item problems (an undecodable image) never reach the batcher: requests submit decoded items.

Cancellation: a request whose ``submit`` is cancelled (its client left) leaves the queue at once and its items never
run; items of a batch already taken are dropped between its calls once every request of the batch was cancelled.
Both are reported to ``BatchObserver.cancelled``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue holds too many items to admit a request now (the server answers 503 + Retry-After)."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class BatchObserver:
    """Callbacks for metrics (all optional): ``batch(kind, items, requests, seconds)`` after each backend call,
    ``queue_wait(kind, seconds)`` per request when its batch starts, ``queue_depth(kind, items)`` on every change,
    ``cancelled(kind, items)`` for items dropped unrun because their requests were cancelled."""

    batch: Callable[[str, int, int, float], None] = lambda kind, items, requests, seconds: None
    queue_wait: Callable[[str, float], None] = lambda kind, seconds: None
    queue_depth: Callable[[str, int], None] = lambda kind, items: None
    cancelled: Callable[[str, int], None] = lambda kind, items: None


@dataclass(eq=False)  # compared by identity: the queue removes exactly the request that was cancelled
class _Request:
    items: list
    future: asyncio.Future
    admission: Admission
    enqueued: float = field(default_factory=time.perf_counter)


class Arrival:
    """A request on its way to a batcher (see ``DynamicBatcher.arrival``); ``done`` once it submitted or gave up."""

    def __init__(self, batcher: DynamicBatcher):
        self._batcher = batcher
        self._pending = True
        batcher._arriving += 1

    def done(self) -> None:
        if self._pending:
            self._pending = False
            self._batcher._arriving -= 1
            self._batcher._poke()


class Admission:
    """Room reserved in a batcher's queue for one request's ``items`` items, released when its batch starts or
    when the request gives up (``release``; idempotent)."""

    def __init__(self, batcher: DynamicBatcher, items: int):
        self._batcher = batcher
        self.items = items
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._batcher._reserved -= self.items
            self._batcher._observer.queue_depth(self._batcher.kind, self._batcher._reserved)


class DynamicBatcher:
    """Merges concurrent requests into backend calls of at most ``max_batch`` items (``max_batch`` may be changed
    while the batcher runs; the next batch follows it).

    kind: a label for metrics and logs ("text", "image"). run_batch: blocking ``items -> results`` (one result per
    item, in order), called in ``executor`` (which may be changed while the batcher runs, like ``max_batch``).
    max_wait_s: the longest the oldest request waits for company.
    max_queue_items: admitted but not yet running items beyond which ``admit`` raises QueueFull.
    batching: False = one request per backend call.
    All methods except ``run_batch`` run on the event loop thread.
    """

    def __init__(
        self,
        kind: str,
        run_batch: Callable[[list], Sequence],
        executor: Executor,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_queue_items: int = 1024,
        batching: bool = True,
        observer: BatchObserver | None = None,
    ):
        if max_batch < 1 or max_queue_items < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue_items must be >= 1 and max_wait_s >= 0")
        self.kind = kind
        self._run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self.batching = batching
        self._observer = observer or BatchObserver()
        self._queue: collections.deque[_Request] = collections.deque()
        self._reserved = 0  # items admitted and not yet taken into a running batch
        self._arriving = 0  # requests that reached the server and will submit to this batcher soon
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    # --- lifecycle ---

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.kind}")

    async def close(self) -> None:
        """Refuse new requests, finish every queued one, then stop the loop."""
        self._closing = True
        if self._task is None:
            return
        self._poke()
        await self._task
        self._task = None

    # --- what requests call ---

    def admit(self, items: int) -> Admission:
        """Reserve room for ``items`` items or raise QueueFull / BatcherClosed. A request larger than the whole queue
        is admitted only into an empty queue, so it cannot starve (the server caps request sizes anyway)."""
        if self._closing or self._task is None:
            raise BatcherClosed(f"the {self.kind} batcher is not running")
        if self._reserved and self._reserved + items > self.max_queue_items:
            raise QueueFull(f"{self._reserved} {self.kind} items queued (limit {self.max_queue_items})")
        self._reserved += items
        self._observer.queue_depth(self.kind, self._reserved)
        return Admission(self, items)

    @contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Mark a request that will submit here soon (while its body is read and its items decoded): the loop may
        wait for it (up to max_wait_s) instead of running a smaller batch just before it arrives. Pass the
        Arrival to ``submit``, which ends it; leaving the block ends it too."""
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.done()

    async def submit(self, admission: Admission, items: list, arrival: Arrival | None = None) -> list:
        """Queue ``items`` (at most as many as admitted) and wait for their results, in order; raises what the
        backend raised for this request alone."""
        if len(items) > admission.items:
            raise ValueError(f"admitted {admission.items} items, submitted {len(items)}")
        try:
            if not items:
                return []
            request = _Request(items, asyncio.get_running_loop().create_future(), admission)
            self._queue.append(request)
            if arrival is not None:
                arrival.done()
            self._poke()
            try:
                return await request.future
            except asyncio.CancelledError:
                if request in self._queue:  # not taken into a batch yet: its items never run
                    self._queue.remove(request)
                    self._observer.cancelled(self.kind, len(items))
                    self._poke()
                raise
        finally:
            if arrival is not None:
                arrival.done()
            admission.release()

    # --- the loop ---

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _queued(self) -> int:
        return sum(len(request.items) for request in self._queue)

    async def _wait_change(self, timeout: float | None) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11 on
            pass

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wait_change(None)
                continue
            if self.batching and self.max_wait_s > 0 and not self._closing:
                # Two turns of the event loop first: requests whose bytes are already on their sockets become
                # tasks and mark their arrival (microseconds; a lone request loses nothing).
                for _ in range(2):
                    await asyncio.sleep(0)
                deadline = self._queue[0].enqueued + self.max_wait_s
                # Wait only for requests already inside the server: with none on the way, waiting adds latency and
                # gains nothing (so a lone client sees no batching delay at all).
                while self._queue and self._queued() < self.max_batch and self._arriving > 0:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    await self._wait_change(left)
                if not self._queue:  # every queued request was cancelled while it waited for company
                    continue
            batch = self._take()
            await self._run(batch)

    def _take(self) -> list[_Request]:
        batch = [self._queue.popleft()]
        count = len(batch[0].items)
        while self.batching and self._queue and count + len(self._queue[0].items) <= self.max_batch:
            request = self._queue.popleft()
            batch.append(request)
            count += len(request.items)
        started = time.perf_counter()
        for request in batch:
            request.admission.release()
            self._observer.queue_wait(self.kind, started - request.enqueued)
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            results = await self._call(batch, items)
        except Exception as merged_error:  # noqa: BLE001 - isolated per request below
            if len(batch) == 1:
                _resolve(batch[0].future, error=merged_error)
                return
            logger.warning("%s batch of %d requests failed (%s); rerunning each alone", self.kind, len(batch),
                           merged_error)
            for request in batch:
                if not request.future.done():
                    await self._run([request])
            return
        if results is None:  # every request of the batch was cancelled
            return
        offset = 0
        for request in batch:
            _resolve(request.future, result=list(results[offset : offset + len(request.items)]))
            offset += len(request.items)

    async def _call(self, batch: list[_Request], items: list) -> list | None:
        """``run_batch`` over ``items`` in calls of at most ``max_batch``, results in order; None when every request
        of ``batch`` was cancelled before the remaining calls (those items are reported as cancelled, not run)."""
        loop = asyncio.get_running_loop()
        size = self.max_batch
        owners = [number for number, request in enumerate(batch) for _ in request.items]  # request of each item
        results: list = []
        for start in range(0, len(items), size):
            if all(request.future.done() for request in batch):
                self._observer.cancelled(self.kind, len(items) - start)
                return None
            part = items[start : start + size]
            started = time.perf_counter()
            rows = await loop.run_in_executor(self.executor, self._run_batch, part)
            if len(rows) != len(part):
                raise RuntimeError(f"{self.kind} batch returned {len(rows)} results for {len(part)} items")
            self._observer.batch(self.kind, len(part), len(set(owners[start : start + size])),
                                 time.perf_counter() - started)
            results.extend(rows)
        return results


def _resolve(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client gone): nothing to answer
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
