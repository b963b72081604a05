"""bounded_map and RequestPool: bounded concurrency, results in order, batches served in order."""

from __future__ import annotations

import asyncio

import pytest

from comms.providers.calls import RequestPool, bounded_map


async def settle() -> None:
    """Let every task that can run, run (lanes are tasks started a turn or two later)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Probe:
    """Records how many runs overlap and in which order they start."""

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
            await self.release.wait()
            if item.startswith("bad"):
                raise ValueError(item)
            return item.upper()
        finally:
            self.running -= 1


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


async def test_bounded_map_raises_after_the_other_lanes_finish() -> None:
    probe = Probe()
    probe.release.set()
    with pytest.raises(ValueError, match="bad"):
        await bounded_map(["a", "bad", "c", "d"], probe.run, 2)
    assert set(probe.started) == {"a", "bad", "c", "d"}


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
    assert pool._lanes == 0  # lanes end when the queue is empty


async def test_a_failing_item_fails_its_own_batch_only() -> None:
    pool = RequestPool(2)
    probe = Probe()
    probe.release.set()
    failing = asyncio.create_task(pool.map(["x", "bad", "y"], probe.run))
    fine = asyncio.create_task(pool.map(["p", "q"], probe.run))
    with pytest.raises(ValueError, match="bad"):
        await failing
    assert await fine == ["P", "Q"]
    assert set(probe.started) == {"x", "bad", "y", "p", "q"}  # the failure stopped no other item


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


async def test_batches_arriving_one_by_one_each_get_a_lane_up_to_the_limit() -> None:
    """One request per batch (a 500-message webhook call): four batches, four in flight."""
    pool = RequestPool(8)
    probe = Probe()
    tasks = []
    for name in "abcd":
        tasks.append(asyncio.create_task(pool.map([name], probe.run)))
        await settle()
    assert probe.running == 4
    probe.release.set()
    assert [await t for t in tasks] == [["A"], ["B"], ["C"], ["D"]]
