"""`ordering: job` and replayed dead letters: a replay takes its job's head when the job has
none (a later event waits for it), parks behind the head when it has one, and leaves no head
behind however it ends (delivered, retried then delivered, dead-lettered again).

Real Redis, a real webhook receiver, events written by the real observe script, dead letters
replayed the way `dlq replay` and the API do it (Deliveries.requeue).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from helpers import eventually
from lanes_harness import STORE, ServerFactory, dispatcher, dispatching, new_job
from ordering_kit import JobReceiver, eid, move, ordered, receiver

from bridge.deliveries import Deliveries
from bridge.jobs import Job
from bridge.keys import heads_key, parked_key, retry_key
from bridge.store import Observation, Store


async def replay(redis: aioredis.Redis) -> None:
    deliveries = Deliveries(redis)
    assert await deliveries.requeue(await deliveries.dead_letters("ordered")) == 1


async def dead_letters(redis: aioredis.Redis, count: int) -> bool:
    return await Deliveries(redis).dead_letter_count("ordered") == count


async def idle(redis: aioredis.Redis) -> bool:
    """No head, nothing parked, nothing on the retry schedule: nothing can hold a job back."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hlen(heads_key("ordered"))
        pipe.hlen(parked_key("ordered"))
        pipe.zcard(retry_key("ordered"))
        return not any(await pipe.execute())


def hits(target: JobReceiver, job: Job, status: str, code: int) -> int:
    return target.of(job).count((status, code))


def last(target: JobReceiver, job: Job, status: str, code: int) -> float:
    return max(h.at for h in target.hits if (h.job, h.status, h.code) == (job.id, status, code))


async def test_a_replayed_dead_letter_holds_back_the_later_events_of_its_job(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """The job has no head when its `pending` is replayed: the replay becomes the head, so
    `started`, emitted while the replay is retried, waits until it is dead-lettered again;
    `success`, emitted while the second replay is retried, waits until it is delivered."""
    job = new_job("pending")
    target = await receiver(aiohttp_server, failing={(job.id, "pending"): -1})
    found = dispatcher(redis_client, [ordered("ordered", target, retry_schedule=["300ms"])])
    async with dispatching(found):
        await Store(redis_client, STORE).observe([Observation(job)])
        await eventually(lambda: dead_letters(redis_client, 1), 5, "pending dead-lettered")
        await eventually(lambda: idle(redis_client), 5, "no head after the dead letter")

        await replay(redis_client)  # fails again, twice: dead-lettered again
        await eventually(lambda: hits(target, job, "pending", 500) == 3, 5, "a replayed try")
        job = await move(redis_client, job, "started")
        await eventually(lambda: target.delivered(job, "started"), 5, "started")
        assert await dead_letters(redis_client, 1)
        assert hits(target, job, "pending", 500) == 4
        assert (target.delivered(job, "started") or 0) > last(target, job, "pending", 500)
        await eventually(lambda: idle(redis_client), 5, "no head after the second dead letter")

        target.failing[(job.id, "pending")] = 1  # fails once more, then is delivered
        await replay(redis_client)
        await eventually(lambda: hits(target, job, "pending", 500) == 5, 5, "a replayed try")
        job = await move(redis_client, job, "success")
        await eventually(lambda: target.delivered(job, "success"), 5, "success")
        await eventually(lambda: idle(redis_client), 5, "no head after the delivery")
    assert target.of(job) == [("pending", 500)] * 4 + [
        ("started", 204),
        ("pending", 500),
        ("pending", 204),
        ("success", 204),
    ]
    assert await dead_letters(redis_client, 0)


async def test_a_replayed_dead_letter_parks_behind_the_head_of_its_job(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """`pending` is dead-lettered, `started` then is the job's head and is being retried when
    `pending` is replayed: the replay parks behind it and goes out once `started` is sent."""
    job = new_job("pending")
    failing = {(job.id, "pending"): -1, (job.id, "started"): -1}
    target = await receiver(aiohttp_server, failing=failing)
    found = dispatcher(redis_client, [ordered("ordered", target, retry_schedule=["2s"])])
    async with dispatching(found):
        await Store(redis_client, STORE).observe([Observation(job)])
        await eventually(lambda: dead_letters(redis_client, 1), 10, "pending dead-lettered")
        job = await move(redis_client, job, "started")
        await eventually(lambda: hits(target, job, "started", 500), 5, "started tried")
        await replay(redis_client)
        await eventually(
            lambda: redis_client.hexists(parked_key("ordered"), eid(job, "pending")), 5, "it parked"
        )
        target.failing.clear()
        await eventually(lambda: target.delivered(job, "pending"), 10, "the replayed pending")
        await eventually(lambda: idle(redis_client), 5, "no head left")
    delivered = [status for status, code in target.of(job) if code == 204]
    assert delivered == ["started", "pending"]
