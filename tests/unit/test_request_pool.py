"""bounded_map and RequestPool: bounded concurrency, results in order, batches served in order,
verification codes first, failures and cancellations settled without hanging anybody."""

from __future__ import annotations

import asyncio

import pytest

from comms.providers.calls import RequestPool, bounded_map


async def settle() -> None:
    """Let every task that can run, run (lanes are tasks started a turn or two later)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Probe:
    """Records how many runs overlap and in which order they start. Every run suspends at
    least once, as a real request does; items named "bad..." raise ValueError."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def run(self, item: str) -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(item)
        try:
            await asyncio.sleep(0)
            await self.release.wait()
            if item.startswith("bad"):
                raise ValueError(item)
            return item.upper()
        finally:
            self.running -= 1


def code(item: str) -> bool:
    return item.startswith("code")


async def test_bounded_map_keeps_the_limit_and_the_order() -> None:
    probe = Probe()
    items = [f"m{i}" for i in range(10)]
    task = asyncio.create_task(bounded_map(items, probe.run, 3))
    await settle()
    assert probe.running == 3
    probe.release.set()
    assert await task == [i.upper() for i in items]
    assert probe.peak == 3


async def test_bounded_map_of_nothing_runs_nothing() -> None:
    probe = Probe()
    assert await bounded_map([], probe.run, 4) == []
    assert probe.started == []


async def test_bounded_map_starts_nothing_after_a_failure_and_raises_once_the_rest_finished() -> None:
    probe = Probe()
    probe.release.set()
    with pytest.raises(ValueError, match="bad"):
        await bounded_map(["a", "bad", "c", "d", "e", "f"], probe.run, 2)
    assert probe.running == 0  # nothing left running behind the raise
    assert probe.started == ["a", "bad", "c"]  # "c" was already in flight; "d".."f" never started


async def test_a_pool_serves_batches_first_come_first_served_within_its_limit() -> None:
    pool = RequestPool(4)
    probe = Probe()
    first = asyncio.create_task(pool.map([f"a{i}" for i in range(6)], probe.run))
    await settle()
    second = asyncio.create_task(pool.map([f"b{i}" for i in range(6)], probe.run))
    await settle()
    assert probe.running == 4
    probe.release.set()
    assert await first == [f"A{i}" for i in range(6)]
    assert await second == [f"B{i}" for i in range(6)]
    assert probe.peak == 4
    # Every item of the first batch started before any of the second: it finishes first instead
    # of both finishing together, as a round-robin share of the slots would have them.
    assert probe.started == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    await settle()
    assert not pool._lanes  # lanes end when the queue is empty


async def test_batches_arriving_one_by_one_each_get_a_lane_up_to_the_limit() -> None:
    """One request per batch (a 500-message webhook call): four batches, four in flight."""
    pool = RequestPool(8, extra=0)
    probe = Probe()
    tasks = []
    for name in "abcd":
        tasks.append(asyncio.create_task(pool.map([name], probe.run)))
        await settle()
    assert probe.running == 4
    probe.release.set()
    assert [await t for t in tasks] == [["A"], ["B"], ["C"], ["D"]]


@pytest.mark.parametrize("limit", [1, 4, 8, 16])
async def test_codes_go_ahead_of_queued_bulk_on_a_lane_of_their_own(limit: int) -> None:
    pool = RequestPool(limit)  # limit // 8 (at least one) more lanes for codes only
    probe = Probe()
    bulk = asyncio.create_task(pool.map([f"b{i}" for i in range(3 * limit)], probe.run, code))
    await settle()
    assert probe.running == limit  # bulk keeps to its limit
    codes = asyncio.create_task(pool.map(["code1", "code2"], probe.run, code))
    await settle()
    assert "code1" in probe.started  # at once, although bulk holds every one of its lanes
    probe.release.set()
    assert await codes == ["CODE1", "CODE2"]
    await bulk
    # code2 waited at most for one lane to free up, not behind the queued bulk items.
    assert probe.started.index("code2") <= limit + 2
    assert probe.peak <= limit + max(1, limit // 8)


async def test_a_failing_item_stops_its_own_batch_only() -> None:
    pool = RequestPool(2, extra=0)
    probe = Probe()
    probe.release.set()
    failing = asyncio.create_task(pool.map(["x", "bad", "y", "z"], probe.run))
    fine = asyncio.create_task(pool.map(["p", "q"], probe.run))
    with pytest.raises(ValueError, match="bad"):
        await failing
    assert await fine == ["P", "Q"]
    # Once "bad" failed its batch's queued items were not started (their results would be
    # thrown away with the error; "y" was already in flight); the other batch went on.
    assert "z" not in probe.started
    assert {"p", "q"} <= set(probe.started)


async def test_a_cancelled_batch_starts_no_more_items() -> None:
    pool = RequestPool(1)
    probe = Probe()
    task = asyncio.create_task(pool.map(["a", "b", "c"], probe.run))
    await settle()
    assert probe.started == ["a"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    later = asyncio.create_task(pool.map(["z"], probe.run))
    probe.release.set()
    assert await later == ["Z"]
    assert probe.started == ["a", "z"]  # b and c were never started


async def test_an_item_that_raises_a_cancellation_fails_its_batch_and_the_lane_goes_on() -> None:
    """On a single lane, with more queued behind it in the same batch and in another one."""
    pool = RequestPool(1, extra=0)

    async def run(item: str) -> str:
        await asyncio.sleep(0)
        if item == "boom":
            raise asyncio.CancelledError  # e.g. it awaited a future somebody else cancelled
        return item

    first = asyncio.create_task(pool.map(["boom", "after"], run))
    second = asyncio.create_task(pool.map(["x"], run))
    # A failure of the batch, not a cancellation of its caller (who would give the batch up).
    with pytest.raises(RuntimeError, match="cancelled unexpectedly"):
        await asyncio.wait_for(first, timeout=2)
    assert await asyncio.wait_for(second, timeout=2) == ["x"]
    assert await asyncio.wait_for(pool.map(["next"], run), timeout=2) == ["next"]


async def test_lanes_cancelled_before_they_start_are_not_counted_any_more() -> None:
    pool = RequestPool(2)
    probe = Probe()
    task = asyncio.create_task(pool.map(["a", "b"], probe.run))
    await asyncio.sleep(0)  # map() created its lanes; they have not run yet
    for lane in list(pool._lanes):
        lane.cancel()
    task.cancel()
    await settle()
    assert not pool._lanes
    probe.release.set()
    assert await asyncio.wait_for(pool.map(["c"], probe.run), timeout=2) == ["C"]


async def test_a_batch_right_after_another_gets_every_lane() -> None:
    """Lanes of the batch that just finished must not count as busy for the next one."""
    pool = RequestPool(4, extra=0)
    probe = Probe()
    probe.release.set()
    await pool.map(["a", "b", "c", "d"], probe.run)
    probe.peak = 0
    await pool.map([f"n{i}" for i in range(8)], probe.run)
    assert probe.peak == 4
