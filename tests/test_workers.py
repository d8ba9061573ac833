"""The lanes' workers: every item runs, at most `size` at once, failures are told and
survived, a finish drains or cancels."""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import eventually

from bridge.workers import Workers


def workers(size: int, failures: list[tuple[Any, BaseException]] | None = None) -> Workers:
    told = failures if failures is not None else []
    return Workers(size, lambda tag, error: told.append((tag, error)), lambda: None)


async def test_at_most_size_items_run_at_once_and_all_run_in_order() -> None:
    pool = workers(3)
    running, most, ran = 0, 0, []

    async def item(n: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (n % 4))
        ran.append(n)
        running -= 1

    for n in range(50):
        pool.submit(lambda n=n: item(n))
    assert len(pool) == 50
    await eventually(lambda: len(ran) == 50, 5, "every item")
    assert most == 3 and sorted(ran) == list(range(50)) and len(pool) == 0


async def test_work_submitted_as_the_last_worker_leaves_still_runs() -> None:
    """A worker that finds the queue empty leaves in that same step: work submitted before
    its task is reaped gets a worker (it once waited for ever)."""
    pool = workers(1)
    ran: list[int] = []

    async def second() -> None:
        ran.append(2)

    async def first() -> None:
        ran.append(1)
        asyncio.get_running_loop().call_soon(pool.submit, second)

    pool.submit(first)
    await eventually(lambda: ran == [1, 2], 2, "the second item")


async def test_a_failure_is_told_with_its_tag_and_the_worker_goes_on() -> None:
    failures: list[tuple[Any, BaseException]] = []
    pool = workers(1, failures)
    ran: list[str] = []

    async def boom() -> None:
        raise ValueError("boom")

    async def fine() -> None:
        ran.append("fine")

    pool.submit(boom, ("stream", "1-0"))
    pool.submit(fine)
    await eventually(lambda: ran == ["fine"], 2, "the item after the failure")
    [(tag, error)] = failures
    assert tag == ("stream", "1-0") and isinstance(error, ValueError)


async def test_finish_drains_within_the_grace_and_cancels_after_it() -> None:
    failures: list[tuple[Any, BaseException]] = []
    pool = workers(1, failures)
    ran: list[int] = []

    async def quick(n: int) -> None:
        await asyncio.sleep(0)
        ran.append(n)

    for n in range(3):
        pool.submit(lambda n=n: quick(n))
    await pool.finish(grace=2)
    assert ran == [0, 1, 2]

    pool.submit(lambda: asyncio.sleep(60), "stuck")
    pool.submit(lambda: quick(9), "never")
    await pool.finish(grace=0.05)
    assert [tag for tag, error in failures] == ["stuck"]
    assert isinstance(failures[0][1], asyncio.CancelledError) and 9 not in ran
    assert len(pool) == 0
