"""Adaptive batching owned by the service: a small queue in front of one model function.

A request hands its queries to :class:`Batcher`. When the model is idle its batch leaves
on the next turn of the event loop, with whatever reached the queue in that same turn: a
lone request is not held back (one turn of an idle loop), and requests parsed together
are run together. While a batch runs, arrivals queue; when it ends, the next batch takes
every queued request (FIFO, up to ``max_batch`` queries, a larger request alone), so batch
sizes follow the load with no timer and no learned wait.

Running a lone request in its own coroutine, without the turn, was tried: a request whose
model call runs on the event loop then never yields between parsing and answering, so
under load no request ever finds another queued and nothing is batched (measured: CPU per
query at 64 clients as with batching off).

A request still queued ``max_wait_s`` after it arrived is answered :class:`Overloaded`
(503) when its turn comes instead of being run: its answer would come too late to act on,
and the queue drains instead of growing.

Everything here runs on the event loop; ``run`` decides where a batch computes (the loop
itself or a thread).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Generic, TypeVar

from bentoml.exceptions import BentoMLException

Q = TypeVar("Q")
A = TypeVar("A")


class Overloaded(BentoMLException):
    """A queued request waited past the batcher's deadline (503; the middleware says
    "overloaded" and adds Retry-After)."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


class Batcher(Generic[Q, A]):
    """Merges concurrent requests' queries into batches for ``run`` (one batch at a time).

    ``run(queries)`` computes one answer per query, in order; each request gets back the
    answers to its own queries.
    """

    def __init__(
        self,
        run: Callable[[list[Q]], Awaitable[list[A]]],
        max_batch: int,
        max_wait_s: float,
    ) -> None:
        assert max_batch >= 1 and max_wait_s > 0, (max_batch, max_wait_s)
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self._queue: deque[tuple[Sequence[Q], asyncio.Future, float]] = deque()
        self._busy = False
        """A drain task is running batches."""
        self._drainer: asyncio.Task | None = None
        """That task, held so it is not collected while it runs."""
        self.batches = 0
        """Batches run so far (tests and benchmarks read it)."""
        self.queries = 0
        """Queries answered so far."""

    async def __call__(self, queries: Sequence[Q]) -> list[A]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((queries, future, time.monotonic()))
        if not self._busy:
            self._busy = True
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Sequence[Q], asyncio.Future]]:
        """The next batch: queued requests in order while their queries fit ``max_batch``;
        expired and cancelled ones are answered and dropped on the way."""
        batch, size, now = [], 0, time.monotonic()
        while self._queue:
            queries, future, arrived = self._queue[0]
            if future.done():  # the caller went away
                self._queue.popleft()
                continue
            if now - arrived > self.max_wait_s:
                self._queue.popleft()
                future.set_exception(
                    Overloaded(
                        f"waited {now - arrived:.2f} s for the model, longer than "
                        f"{self.max_wait_s:g} s"
                    )
                )
                continue
            if batch and size + len(queries) > self.max_batch:
                break
            self._queue.popleft()
            batch.append((queries, future))
            size += len(queries)
        return batch

    async def _drain(self) -> None:
        """Run batches until the queue is empty."""
        try:
            while batch := self._take():
                merged = [q for queries, _ in batch for q in queries]
                try:
                    answers = await self.run(merged)
                except Exception as exc:  # every request of the batch gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                assert len(answers) == len(merged), (len(answers), len(merged))
                self.batches += 1
                self.queries += len(merged)
                start = 0
                for queries, future in batch:
                    if not future.done():
                        future.set_result(answers[start : start + len(queries)])
                    start += len(queries)
        finally:
            self._busy = False
