"""Running a provider's vendor requests concurrently, and how their failures settle.

``bounded_map`` runs at most ``limit`` requests at a time on ``limit`` lanes that take the next
item as they finish one: a task per item waiting on a semaphore costs more CPU than a small
request itself when a 500-message batch goes out one request per message.

``RequestPool`` is the same for every send of one account in a process: its lanes serve the
batches in flight first come, first served, verification codes first. A semaphore shared by
the batches' own lanes would serve them round-robin instead, so they would all finish together
and leave the connections idle while each records its outcomes and the next ones are claimed
(measured: ~20% of a worker's time with a fast gateway). In arrival order, one batch finishes
while the next ones keep the lanes busy.

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
    """``run`` over ``items``, at most ``limit`` at a time; results in the items' order. After an
    exception no further item starts; those in flight finish; then the first exception is raised."""
    results: list[Result | None] = [None] * len(items)
    errors: list[Exception] = []
    queue = iter(enumerate(items))

    async def lane() -> None:
        for index, item in queue:
            if errors:
                return
            try:
                results[index] = await run(item)
            except Exception as exc:
                errors.append(exc)

    lanes = min(max(1, limit), len(items))
    if lanes == 1:
        await lane()
    elif lanes > 1:
        await asyncio.gather(*(lane() for _ in range(lanes)))
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot was filled


def fault(exc: Exception) -> str:
    """The error of a message whose request met a fault of ours mid-call (it may have left, so
    it is UNKNOWN: looked up or re-sent once, flagged; never offered to another account)."""
    return f"request failed unexpectedly: {type(exc).__name__}: {exc}"


def is_code(message: OutboundMessage) -> bool:
    """A verification code: it goes ahead of bulk in an account's RequestPool."""
    return message.category == "verification"


def carries_code(messages: Sequence[OutboundMessage]) -> bool:
    """A vendor call with a code in it (the dispatcher puts a batch's codes in its first call)."""
    return any(m.category == "verification" for m in messages)


class _Job(Generic[Item, Result]):
    """One ``map`` call: its items, their results, and the caller's future."""

    __slots__ = ("done", "error", "items", "pending", "results", "run")

    def __init__(self, items: Sequence[Item], run: Callable[[Item], Awaitable[Result]]) -> None:
        self.items = items
        self.run = run
        self.results: list[Result | None] = [None] * len(items)
        self.pending = len(items)  # items not settled yet (finished, or skipped)
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def stopped(self) -> bool:
        """One of its items failed, or its caller gave up: start none of the others."""
        return self.error is not None or self.done.done()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def settle_one(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.done.done():
            self.done.set_result(None)


class RequestPool:
    """At most ``limit`` bulk requests in flight for everything an account sends in this process.

    Items run in the order their ``map`` calls arrived, except urgent ones (verification codes),
    which go first; and while bulk holds every one of the ``limit`` lanes, up to ``extra`` codes
    (``limit // 8``, at least one) may run beside it: a code starts at once even while a slow
    vendor holds every bulk request, at the cost of up to ``limit + extra`` requests in flight
    while that lasts. Lanes are tasks that live while there is work they may take.
    """

    def __init__(self, limit: int, extra: int | None = None) -> None:
        self.limit = max(1, limit)
        self.extra = max(1, self.limit // 8) if extra is None else max(0, extra)
        self._urgent: deque[tuple[_Job[Any, Any], int]] = deque()
        self._normal: deque[tuple[_Job[Any, Any], int]] = deque()
        self._lanes: set[asyncio.Task[None]] = set()  # also keeps them referenced (the loop does not)
        self._normal_busy = 0
        self._urgent_busy = 0

    async def map(
        self,
        items: Sequence[Item],
        run: Callable[[Item], Awaitable[Result]],
        urgent: Callable[[Item], bool] | None = None,
    ) -> list[Result]:
        """``run`` over ``items``; results in the items' order. After an exception none of the
        job's other items starts; those in flight finish; then the first exception is raised."""
        if not items:
            return []
        job: _Job[Item, Result] = _Job(items, run)
        for index, item in enumerate(items):
            (self._urgent if urgent is not None and urgent(item) else self._normal).append((job, index))
        # Every lane is busy with an item, so each queued item may need a new one; a lane that
        # finds nothing it may take when it starts just ends.
        loop = asyncio.get_running_loop()
        # (A lane that has just ended stays in the set until its done-callback runs: not counted.)
        alive = sum(1 for lane in self._lanes if not lane.done())
        for _ in range(min(self.limit + self.extra - alive, len(self._urgent) + len(self._normal))):
            lane = loop.create_task(self._lane())
            self._lanes.add(lane)
            lane.add_done_callback(self._lanes.discard)
        await job.done  # cancelled (the caller gave up): its queued items are skipped, not started
        if job.error is not None:
            raise job.error
        return job.results  # type: ignore[return-value]  # every slot was filled

    def _take(self) -> tuple[_Job[Any, Any], int, bool] | None:
        """The next item this lane may run: (job, index, is it bulk), or None."""
        busy = self._normal_busy + self._urgent_busy
        while self._urgent and (
            busy < self.limit or (self._normal_busy > 0 and busy < self.limit + self.extra)
        ):
            job, index = self._urgent.popleft()
            if not job.stopped:
                return job, index, False
            job.settle_one()
        while self._normal and self._normal_busy < self.limit:
            job, index = self._normal.popleft()
            if not job.stopped:
                return job, index, True
            job.settle_one()
        return None

    async def _lane(self) -> None:
        while (taken := self._take()) is not None:
            job, index, bulk = taken
            self._normal_busy += bulk
            self._urgent_busy += not bulk
            try:
                job.results[index] = await job.run(job.items[index])
            except asyncio.CancelledError:
                lane = asyncio.current_task()
                if lane is not None and lane.cancelling():
                    job.fail(RuntimeError("the request's lane was stopped (the process is stopping)"))
                    raise  # this lane itself is cancelled (the loop is closing): end it
                # The request awaited something that was cancelled elsewhere: its failure, not the
                # lane's, and not a cancellation of the caller (who would then give up the batch).
                job.fail(RuntimeError("the request was cancelled unexpectedly"))
            except Exception as exc:  # kept for its caller
                job.fail(exc)
            except BaseException as exc:  # the process is exiting
                job.fail(exc)
                raise
            finally:
                self._normal_busy -= bulk
                self._urgent_busy -= not bulk
                job.settle_one()


async def send_calls(
    calls: Sequence[Item],
    execute: Callable[[Item], Awaitable[list[SendResult]]],
    messages_of: Callable[[Item], Sequence[OutboundMessage]],
    pool: RequestPool,
) -> list[SendResult]:
    """Results of every call's messages (in call order), through the account's ``pool`` (calls
    carrying a code go first)."""
    if not calls:
        return []

    def urgent(call: Item) -> bool:
        return carries_code(messages_of(call))

    first = (await pool.map(calls[:1], execute, urgent))[0]

    async def later(call: Item) -> list[SendResult]:
        try:
            return await execute(call)
        except ProviderError as exc:
            return [
                SendResult(m.id, Outcome.RETRY, error=exc.message, retry_after=exc.retry_after)
                for m in messages_of(call)
            ]
        except Exception as exc:  # a fault of ours mid-call: it may have left, never re-send blindly
            return [SendResult(m.id, Outcome.UNKNOWN, error=fault(exc)) for m in messages_of(call)]

    rest = await pool.map(calls[1:], later, urgent)
    return [result for answer in (first, *rest) for result in answer]


__all__ = ["RequestPool", "bounded_map", "carries_code", "fault", "is_code", "send_calls"]
