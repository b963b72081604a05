"""Running a provider's vendor requests concurrently, and how their failures settle.

``bounded_map`` runs at most ``limit`` requests at a time on ``limit`` lanes that take the next
item as they finish one: a task per item waiting on a semaphore costs more CPU than a small
request itself when a 500-message batch goes out one request per message.

``RequestPool`` is the same for every send of one account in a process: its lanes serve the
batches in flight first come, first served. A semaphore shared by the batches' own lanes would
serve them round-robin instead, so they would all finish together and leave the connections
idle while each records its outcomes and the next ones are claimed (measured: ~20% of a
worker's time with a fast gateway). In arrival order, one batch finishes while the next ones
keep the lanes busy.

``send_calls``: the first request goes alone. If the vendor refuses it as a whole (bad
credentials, an outage), the error is raised and nothing else was tried, so the dispatcher can
fail the whole chunk over to the next account. Once one request went through, the rest go
concurrently, and a refusal of one of them only makes its own messages RETRY: the others were
already sent and must not be offered to a second account.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from comms.errors import ProviderError
from comms.providers.base import OutboundMessage, Outcome, SendResult

Item = TypeVar("Item")
Result = TypeVar("Result")


async def bounded_map(
    items: Sequence[Item], run: Callable[[Item], Awaitable[Result]], limit: int
) -> list[Result]:
    """``run`` over ``items``, at most ``limit`` at a time; results in the items' order. An
    exception stops its own lane only (the others finish their items), then propagates."""
    results: list[Result | None] = [None] * len(items)
    queue = iter(enumerate(items))

    async def lane() -> None:
        for index, item in queue:
            results[index] = await run(item)

    lanes = min(max(1, limit), len(items))
    if lanes == 1:
        await lane()
    elif lanes > 1:
        await asyncio.gather(*(lane() for _ in range(lanes)))
    return results  # type: ignore[return-value]  # every slot was filled, or we raised


class _Job(Generic[Item, Result]):
    __slots__ = ("done", "error", "items", "next", "pending", "results", "run")

    def __init__(self, items: Sequence[Item], run: Callable[[Item], Awaitable[Result]]) -> None:
        self.items = items
        self.run = run
        self.results: list[Result | None] = [None] * len(items)
        self.next = 0  # the first item no lane has taken yet
        self.pending = len(items)  # items not finished yet
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class RequestPool:
    """At most ``limit`` requests in flight for everything sent through it, served in the order
    the ``map`` calls arrived. Lanes are tasks that live while there is work queued."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._jobs: deque[_Job[Any, Any]] = deque()
        self._lanes = 0
        self._running: set[asyncio.Task[None]] = set()

    async def map(self, items: Sequence[Item], run: Callable[[Item], Awaitable[Result]]) -> list[Result]:
        """``run`` over ``items``; results in the items' order. The first exception of one of
        them is raised once all of them finished."""
        if not items:
            return []
        job: _Job[Item, Result] = _Job(items, run)
        self._jobs.append(job)
        # A lane lives only while it has an item: every lane is busy, so each queued item needs a
        # new one (a lane that finds the queue already drained when it starts just ends).
        for _ in range(min(self.limit - self._lanes, self._queued())):
            self._lanes += 1
            lane = asyncio.get_running_loop().create_task(self._lane())
            self._running.add(lane)  # the loop keeps only weak references to tasks
            lane.add_done_callback(self._running.discard)
        try:
            await job.done
        except asyncio.CancelledError:
            # The caller gave up (a stop past its drain time): start none of its items any more.
            if job in self._jobs:
                self._jobs.remove(job)
            raise
        if job.error is not None:
            raise job.error
        return job.results  # type: ignore[return-value]  # every slot was filled

    def _queued(self) -> int:
        return sum(len(job.items) - job.next for job in self._jobs)

    async def _lane(self) -> None:
        try:
            while self._jobs:
                job = self._jobs[0]
                index = job.next
                job.next += 1
                if job.next == len(job.items):
                    self._jobs.popleft()
                try:
                    job.results[index] = await job.run(job.items[index])
                except Exception as exc:  # kept for the caller; this lane goes on with the next
                    if job.error is None:
                        job.error = exc
                job.pending -= 1
                if job.pending == 0 and not job.done.done():
                    job.done.set_result(None)
        finally:
            self._lanes -= 1


class AccountPools:
    """An account's requests in flight in one process: ``concurrency`` lanes for bulk, and a
    quarter as many of their own for verification codes, so a code the express lane claimed
    never queues behind a bulk's thousands of requests (a slow vendor, a big batch in flight)."""

    def __init__(self, concurrency: int) -> None:
        self.bulk = RequestPool(concurrency)
        self.codes = RequestPool(max(1, concurrency // 4))

    def pool_for(self, messages: Sequence[OutboundMessage]) -> RequestPool:
        if messages and all(m.category == "verification" for m in messages):
            return self.codes
        return self.bulk


async def send_calls(
    calls: Sequence[Item],
    execute: Callable[[Item], Awaitable[list[SendResult]]],
    messages_of: Callable[[Item], Sequence[OutboundMessage]],
    limit: int | RequestPool,
) -> list[SendResult]:
    """Results of every call's messages (in call order): at most ``limit`` calls in flight, or
    through a ``RequestPool`` shared with the account's other sends."""
    if not calls:
        return []
    if isinstance(limit, RequestPool):
        first = (await limit.map(calls[:1], execute))[0]
    else:
        first = await execute(calls[0])

    async def later(call: Item) -> list[SendResult]:
        try:
            return await execute(call)
        except ProviderError as exc:
            return [
                SendResult(m.id, Outcome.RETRY, error=exc.message, retry_after=exc.retry_after)
                for m in messages_of(call)
            ]
        except Exception as exc:  # a fault of ours mid-call: it may have left, never re-send blindly
            error = f"request failed unexpectedly: {type(exc).__name__}: {exc}"
            return [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in messages_of(call)]

    if isinstance(limit, RequestPool):
        rest = await limit.map(calls[1:], later)
    else:
        rest = await bounded_map(calls[1:], later, limit)
    return [result for answer in (first, *rest) for result in answer]


__all__ = ["AccountPools", "RequestPool", "bounded_map", "send_calls"]
