"""The Slack sink against a local fake Slack (real HTTP) and a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import ON_BOTH, RedisTarget
from fakeslack import TOKEN, WEBHOOK_PATH, FakeSlack, Fault, Message, block_kit_problem
from helpers import eventually
from structlog.testing import capture_logs

from bridge.events import build_event, encode, event_id
from bridge.sinks import DeliveryResult
from bridge.sinks.slack import SlackSink, SlackSubscription
from bridge.sinks.slack.render import (
    COLOURS,
    NEUTRAL_COLOUR,
    JobView,
    render_digest,
    render_error_thread,
    render_job_message,
)

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
FAST = 0.02  # pacing for tests that are not about pacing: Slack's 1 s would only slow them
JOB_ID = "2950cae3-1050-4c43-9fbd-2aa60dc5c249"
TIMES = {
    "created_at": "2024-01-05T13:40:00.000Z",
    "started_at": "2024-01-05T13:40:05.000Z",
    "completed_at": "2024-01-05T13:46:42.000Z",
}
SEQUENCE = {"pending": 1, "started": 2, "failed": 3, "success": 3, "cancelled": 3, "stalled": 3}
PREVIOUS = {"pending": None, "started": "pending", "stalled": "started"}


def job_event(
    status: str,
    *,
    job_id: str = JOB_ID,
    job_type: str = "product-import",
    errors: int = 0,
    sequence: int | None = None,
) -> dict[str, Any]:
    job_status = "started" if status == "stalled" else status
    job = {
        "id": job_id,
        "type": job_type,
        "status": job_status,
        "created_at": TIMES["created_at"],
        "started_at": None if status == "pending" else TIMES["started_at"],
        "completed_at": TIMES["completed_at"] if status in ("success", "failed") else None,
        "updated_at": TIMES["completed_at"],
        "meta": {},
    }
    return build_event(
        id=event_id("us-main", "pcm", job_id, status),
        store="us-main",
        source="pcm",
        status=status,
        previous_status=PREVIOUS.get(status, "started"),
        sequence=sequence or SEQUENCE[status],
        time="2024-01-05T13:46:42.142Z",
        job=job,
        errors=[{"message": f"row {n}: price is not a number"} for n in range(1, errors + 1)],
    )


async def deliver(sink: SlackSink, event: dict[str, Any]) -> DeliveryResult:
    return await sink.deliver(event, encode(event))


def assert_no_secret(text: str) -> None:
    assert TOKEN not in text
    assert WEBHOOK_PATH not in text
    assert "XXXXXXXXXXXXXXXXXXXXXXXX" not in text


def section_texts(message: Message) -> list[str]:
    return [
        b["text"]["text"] for b in message.all_blocks() if b["type"] == "section" and "text" in b
    ]


def field_texts(message: Message) -> list[str]:
    return [f["text"] for b in message.all_blocks() for f in b.get("fields", [])]


@dataclass
class Slack:
    fake: FakeSlack
    server: TestServer

    @property
    def webhook_url(self) -> str:
        return str(self.server.make_url(WEBHOOK_PATH))

    @property
    def api_base_url(self) -> str:
        return str(self.server.make_url("/api/"))


async def start_slack(aiohttp_server: ServerFactory) -> Slack:
    fake = FakeSlack(rate_interval=FAST)
    return Slack(fake, await aiohttp_server(fake.app))


@pytest.fixture
async def slack(aiohttp_server: ServerFactory) -> Slack:
    return await start_slack(aiohttp_server)


SinkFactory = Callable[..., Awaitable[SlackSink]]


@pytest.fixture
async def sink_for(slack: Slack, any_redis: RedisTarget) -> AsyncIterator[SinkFactory]:
    """Started sinks aimed at the fake (127.0.0.1, so private networks are allowed), their
    state in `any_redis`."""
    redis_client = any_redis.client
    sinks: list[SlackSink] = []

    async def make(mode: str = "bot", name: str = "failed-imports", **kwargs: Any) -> SlackSink:
        if mode == "bot":
            kwargs.setdefault("token", TOKEN)
            kwargs.setdefault("channel", "#ops")
            kwargs.setdefault("api_base_url", slack.api_base_url)
        else:
            kwargs.setdefault("webhook_url", slack.webhook_url)
        kwargs.setdefault("allow_private_networks", True)
        kwargs.setdefault("min_interval", FAST)
        kwargs.setdefault("group_threshold", 100)
        sink = SlackSink(name, redis_client, **kwargs)
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


async def _in_digest(redis: aioredis.Redis, count: int) -> bool:
    return int(await redis.hlen("jb:slack:{failed-imports}:digest")) == count


# Rendering


async def test_failed_import_with_150_errors_renders_within_limits(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("webhook", link_template="https://example.com/jobs/{store}/{job_id}")
    result = await deliver(sink, job_event("failed", errors=150))

    assert result.ok, result
    assert result.status == 200
    (message,) = slack.fake.messages
    assert block_kit_problem(message.payload()) is None
    assert message.header() == ":x: product-import failed"
    assert message.colour() == COLOURS["failed"] == "#d40e0d"
    assert message.text.startswith(":x: product-import failed: job " + JOB_ID)
    assert "row 1: price is not a number" in message.text
    fields = field_texts(message)
    assert len(fields) <= 10
    assert "*Store*\nus-main" in fields
    assert f"*Job ID*\n`{JOB_ID}`" in fields
    assert "*Type*\nproduct-import" in fields
    assert "*Source*\npcm" in fields
    assert "*Status*\nstarted → failed" in fields
    assert "*Duration*\n6 min 37 s" in fields
    assert any(f.startswith("*Completed*\n<!date^1704462402^") for f in fields)
    (errors,) = [t for t in section_texts(message) if "errors" in t]
    assert errors.startswith("*150 errors*\n• row 1: price is not a number")
    assert errors.endswith("• row 10: price is not a number\n… and 140 more")
    (actions,) = [b for b in message.all_blocks() if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == f"https://example.com/jobs/us-main/{JOB_ID}"
    context = json.dumps([b for b in message.all_blocks() if b["type"] == "context"])
    assert "jobs-bridge" in context and job_event("failed")["id"] in context


def test_hostile_input_stays_within_every_limit() -> None:
    huge = "<!channel> & " + "x" * 20_000
    event = job_event("failed", job_id="j" * 5000, job_type="t<&>" * 500)
    event["data"]["store"] = "s" * 5000
    event["data"]["errors"] = [{"message": huge}] * 2000 + [{"code": 7}, "plain", None]
    view = JobView.of(event)

    for payload in (
        render_job_message(view, link="https://example.com/" + "a" * 2900, max_errors=10_000),
        render_error_thread(view),
        render_digest(
            [
                {"t": i, "job_id": "j" * 5000, "job_type": "t" * 5000, "error": huge}
                for i in range(3000)
            ]
            + [{"job_type": f"type-{i}", "status": "stalled"} for i in range(40)],
            window=30,
            threshold=5,
            now=time.time(),
        ),
    ):
        # Plain values in the asserts: pytest would otherwise render the huge payload.
        problem = block_kit_problem(payload)
        assert problem is None, problem
        mentions = json.dumps(payload).count("<!channel>")
        assert mentions == 0  # escaped: no mention of the whole channel
        text_length = len(payload["text"])
        assert text_length <= 1000


def test_statuses_choose_colour_and_header() -> None:
    colours = {
        status: render_job_message(JobView.of(job_event(status)))["attachments"][0]["color"]
        for status in ("pending", "started", "success", "failed", "cancelled", "stalled")
    }
    assert colours == {
        "pending": NEUTRAL_COLOUR,
        "started": NEUTRAL_COLOUR,
        "success": "#2eb886",
        "failed": "#d40e0d",
        "cancelled": "#daa038",
        "stalled": "#daa038",
    }
    stalled = json.dumps(render_job_message(JobView.of(job_event("stalled"))))
    assert ":warning: product-import stalled" in stalled
    assert "*Running for*\\n6 min 37 s" in stalled


# Bot mode: one message per job


@ON_BOTH
async def test_bot_updates_one_message_per_job_and_threads_errors(
    slack: Slack, sink_for: SinkFactory, any_redis: RedisTarget
) -> None:
    redis_client = any_redis.client
    sink = await sink_for("bot")
    for status in ("pending", "started"):
        assert (await deliver(sink, job_event(status))).ok
    result = await deliver(sink, job_event("failed", errors=150))
    assert result.ok, result

    (message,) = slack.fake.top_level()
    assert message.channel == "C0OPS"
    assert message.updates == 2
    assert [v["attachments"][0]["blocks"][0]["text"]["text"] for v in message.history] == [
        ":hourglass_flowing_sand: product-import pending",
        ":arrows_counterclockwise: product-import started",
    ]
    assert message.header() == ":x: product-import failed"
    (errors,) = [t for t in section_texts(message) if "errors" in t]
    assert errors.endswith("… and 145 more (all in the thread)")
    (reply,) = slack.fake.replies(message.ts)
    reply_text = "\n".join(section_texts(reply))
    assert reply_text.startswith(f"*150 errors* of product-import `{JOB_ID}`\n1. row 1")
    assert "100. row 100: price is not a number" in reply_text
    assert reply_text.endswith("… and 50 more")
    assert reply.text == f"150 errors of product-import {JOB_ID}"

    key = sink.job_key("us-main", "pcm", JOB_ID)
    assert key == f"jb:slack:{{failed-imports}}:us-main:pcm:{JOB_ID}"
    stored = await redis_client.hgetall(key)
    assert (stored["ts"], stored["channel"], stored["seq"]) == (message.ts, "C0OPS", "3")
    assert 13 * 86400 < await redis_client.ttl(key) <= 14 * 86400


async def test_bot_concurrent_events_of_one_job_make_one_message(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("bot")
    events = [job_event("pending"), job_event("started")]
    results = await asyncio.gather(*(deliver(sink, e) for e in events))

    assert all(r.ok for r in results), results
    (message,) = slack.fake.top_level()
    assert message.updates == 1
    assert message.header() == ":arrows_counterclockwise: product-import started"


async def test_bot_redelivery_and_late_events_change_nothing(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("bot")
    assert (await deliver(sink, job_event("failed", errors=2))).ok
    assert (await deliver(sink, job_event("failed", errors=2))).ok  # at-least-once: again
    late = await deliver(sink, job_event("started"))  # a retry that arrives after the end

    assert late.ok
    (message,) = slack.fake.top_level()
    assert message.header() == ":x: product-import failed"
    assert message.updates == 1  # the redelivery re-applied the same state; `started` did not
    assert len(slack.fake.replies(message.ts)) == 1


async def test_bot_posts_anew_when_the_message_was_deleted(
    slack: Slack, sink_for: SinkFactory, redis_client: aioredis.Redis
) -> None:
    sink = await sink_for("bot")
    assert (await deliver(sink, job_event("pending"))).ok
    slack.fake.delete(slack.fake.messages[0].ts)
    assert (await deliver(sink, job_event("started"))).ok

    (message,) = slack.fake.top_level()
    assert message.header() == ":arrows_counterclockwise: product-import started"
    stored = await redis_client.hgetall(sink.job_key("us-main", "pcm", JOB_ID))
    assert stored["ts"] == message.ts


async def test_webhook_mode_posts_one_message_per_event(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("webhook")
    with capture_logs() as logs:
        for status in ("pending", "started", "success"):
            assert (await deliver(sink, job_event(status))).ok

    assert [(m.header(), m.colour(), m.via) for m in slack.fake.messages] == [
        (":hourglass_flowing_sand: product-import pending", NEUTRAL_COLOUR, "webhook"),
        (":arrows_counterclockwise: product-import started", NEUTRAL_COLOUR, "webhook"),
        (":white_check_mark: product-import success", "#2eb886", "webhook"),
    ]
    sent = [(e["event"], e["status"], e["action"]) for e in logs]
    assert sent == [("slack_message_sent", s, "posted") for s in ("pending", "started", "success")]


# Digests


@pytest.mark.parametrize("mode", ["webhook", "bot"])
@ON_BOTH
async def test_failure_storm_becomes_one_digest_and_nothing_is_lost(
    mode: str, slack: Slack, sink_for: SinkFactory, any_redis: RedisTarget
) -> None:
    redis_client = any_redis.client
    sink = await sink_for(mode, group_threshold=3, group_window=1.0)
    job_ids = [f"job-{n:02d}" for n in range(10)]
    events = [
        job_event("stalled" if n == 9 else "failed", job_id=job_id, errors=1)
        for n, job_id in enumerate(job_ids)
    ]
    with capture_logs() as logs:
        for event in events[:3]:
            result = await deliver(sink, event)
            assert result.ok, result
        # The rest fold into the digest: each delivery is done when the digest is sent.
        folded = [asyncio.create_task(deliver(sink, event)) for event in events[3:]]
        await eventually(lambda: _in_digest(redis_client, 7), what="seven folded failures")
        assert len(slack.fake.top_level()) == 3
        assert not any(task.done() for task in folded)
        results = await asyncio.gather(*folded)
        assert all(result.ok for result in results), results
        assert len(slack.fake.top_level()) == 4
        await eventually(lambda: any(e["event"] == "slack_digest_sent" for e in logs))

    events = [e["event"] for e in logs]
    assert events.count("slack_message_sent") == 3
    assert events.count("slack_event_folded") == 7
    digest = slack.fake.top_level()[-1]
    assert digest.header() == ":rotating_light: 7 jobs failed or stalled in the last 1 s"
    assert digest.colour() == COLOURS["failed"]
    assert digest.text.startswith("7 jobs failed or stalled in the last 1 s: product-import: 7")
    listed = "\n".join(section_texts(digest))
    assert listed.count("• product-import `job-") == 7
    assert "`job-09` (us-main/pcm) stalled: row 1: price is not a number" in listed
    for job_id in job_ids:  # each job in exactly one top-level message
        assert sum(job_id in m.dump() for m in slack.fake.top_level()) == 1, job_id
    assert block_kit_problem(digest.payload()) is None
    assert await redis_client.hgetall(sink.stats_key) == {"digests_sent": "1"}
    assert not await redis_client.exists(
        "jb:slack:{failed-imports}:digest", "jb:slack:{failed-imports}:digest:inflight"
    )


async def test_digest_lists_the_first_and_counts_the_rest(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("webhook", group_threshold=0, group_window=0.5)
    events = [job_event("failed", job_id=f"job-{n:02d}") for n in range(40)]
    results = await asyncio.gather(*(deliver(sink, event) for event in events))
    assert all(result.ok for result in results)

    await eventually(lambda: len(slack.fake.messages) == 1)
    (digest,) = slack.fake.messages
    listed = "\n".join(section_texts(digest))
    assert listed.count("• product-import") == 15
    assert listed.endswith("… and 25 more")
    assert digest.header() == ":rotating_light: 40 jobs failed in the last 0.5 s"


@ON_BOTH
async def test_digest_left_over_at_shutdown_is_sent_on_start(
    slack: Slack,
    sink_for: SinkFactory,
    aiohttp_server: ServerFactory,
    any_redis: RedisTarget,
) -> None:
    redis_client = any_redis.client
    first = await sink_for("webhook", group_threshold=0, group_window=1.0)
    waiting = [
        asyncio.create_task(deliver(first, job_event("failed", job_id=f"job-{n}")))
        for n in range(3)
    ]
    await eventually(lambda: _in_digest(redis_client, 3), what="three folded failures")
    await first.close()  # before the window ends: the digest waits in Redis
    # Fence: a live sink's digest, of a window opened after that close, reaches a Slack of its
    # own. By then the closed sink's window has ended too: had it gone on, it would have sent.
    other = await start_slack(aiohttp_server)
    fence = await sink_for(
        "webhook", name="fence", webhook_url=other.webhook_url, group_threshold=0,
        group_window=1.0,
    )  # fmt: skip
    assert (await deliver(fence, job_event("failed", job_id="job-fence"))).ok
    await eventually(lambda: len(other.fake.messages) == 1, timeout=5, what="the fence digest")
    assert slack.fake.messages == []

    await sink_for("webhook", group_threshold=0, group_window=1.0)
    await eventually(lambda: len(slack.fake.messages) == 1, timeout=3)
    assert slack.fake.messages[0].header() == ":rotating_light: 3 jobs failed in the last 1 s"
    # The deliveries that folded them learn it from Redis, though another sink sent it.
    results = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert all(result.ok for result in results)


async def test_digest_send_retries_5xx_and_429(slack: Slack, sink_for: SinkFactory) -> None:
    sink = await sink_for("bot", group_threshold=0, group_window=0.3)
    sink.digest.backoff = (0.05, 0.05, 0.05)
    ratelimited = {"ok": False, "error": "ratelimited"}
    # A 429 asking for 1 s is waited out inside the call, then answered by the fake again.
    slack.fake.faults = [Fault(500), Fault(503), Fault(429, ratelimited, {"Retry-After": "1"})]
    assert (await deliver(sink, job_event("failed"))).ok

    await eventually(lambda: len(slack.fake.messages) == 1, timeout=15)
    assert [status for _, status, _ in slack.fake.rejected] == [500, 503, 429]


async def test_digest_that_keeps_failing_fails_its_events_deliveries(
    slack: Slack, sink_for: SinkFactory, redis_client: aioredis.Redis
) -> None:
    sink = await sink_for("webhook", group_threshold=0, group_window=0.2)
    sink.digest.backoff = (0.02, 0.02)
    slack.fake.faults = [Fault(500)] * 3
    with capture_logs() as logs:
        events = [job_event("failed", job_id=f"job-{n}") for n in range(2)]
        results = await asyncio.gather(*(deliver(sink, event) for event in events))
        await eventually(lambda: any(e["event"] == "slack_digest_failed" for e in logs))

    (failed,) = [e for e in logs if e["event"] == "slack_digest_failed"]
    assert failed["events"] == 2 and failed["reason"] == "Slack answered 500 Internal Server Error"
    # Not lost: each event's delivery failed with it, to be retried (or dead-lettered).
    assert [(r.ok, r.retryable, r.status, r.reason) for r in results] == [
        (False, True, 500, "Slack answered 500 Internal Server Error")
    ] * 2
    stats = await redis_client.hgetall(sink.stats_key)
    assert stats == {"digests_failed": "1", "digest_events_failed": "2"}
    assert slack.fake.messages == []


async def test_folded_failure_still_updates_the_jobs_own_message(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("bot", group_threshold=0, group_window=0.3)
    assert (await deliver(sink, job_event("started"))).ok
    assert (await deliver(sink, job_event("failed", errors=3))).ok

    job_message = slack.fake.top_level()[0]
    assert job_message.header() == ":x: product-import failed"  # edited, no new message
    await eventually(lambda: len(slack.fake.top_level()) == 2)
    assert slack.fake.top_level()[1].header() == ":rotating_light: 1 job failed in the last 0.3 s"
    assert slack.fake.replies(job_message.ts) == []  # the digest carries the error


# Pacing and rate limits


async def test_sends_are_paced_one_per_second_and_none_dropped(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    fake = FakeSlack(rate_interval=1.0)  # Slack's real limit
    server = await aiohttp_server(fake.app)
    sink = SlackSink(
        "paced",
        redis_client,
        webhook_url=str(server.make_url(WEBHOOK_PATH)),
        allow_private_networks=True,
    )
    await sink.start()
    try:
        events = [job_event("failed", job_id=f"job-{n}") for n in range(3)]
        results = await asyncio.gather(*(deliver(sink, e) for e in events))
    finally:
        await sink.close()

    assert all(r.ok for r in results), results
    assert fake.rejected == []  # paced by the sink, not refused by Slack
    times = [m.posted_at for m in fake.messages]
    assert len(times) == 3
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(times))


async def test_short_429_is_waited_out_once_inside_the_sink(
    slack: Slack, sink_for: SinkFactory
) -> None:
    slack.fake.rate_interval = 1.0
    sink = await sink_for("bot", min_interval=0)  # only Slack's 429 holds it back now
    assert (await deliver(sink, job_event("failed", job_id="a"))).ok
    result = await deliver(sink, job_event("failed", job_id="b"))

    assert result.ok, result
    assert [(m, s, e) for m, s, e in slack.fake.rejected] == [
        ("chat.postMessage", 429, "ratelimited")
    ]
    assert len(slack.fake.messages) == 2
    assert result.duration_ms >= 900


async def test_long_429_goes_back_with_retry_after(slack: Slack, sink_for: SinkFactory) -> None:
    sink = await sink_for("webhook")
    slack.fake.faults = [Fault(429, "rate_limited", {"Retry-After": "30"})]
    result = await deliver(sink, job_event("failed"))

    assert (result.ok, result.status, result.retryable, result.disable) == (False, 429, True, False)
    assert result.retry_after == 30.0
    assert result.reason == "Slack is rate limiting this webhook (429 Too Many Requests)"
    assert slack.fake.messages == []


# Failures


@pytest.mark.parametrize("mode", ["webhook", "bot"])
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(
    mode: str, status: int, slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for(mode)
    slack.fake.faults = [Fault(status, "oops")]
    result = await deliver(sink, job_event("failed"))
    assert (result.ok, result.status, result.retryable, result.disable) == (
        False,
        status,
        True,
        False,
    )
    assert result.reason.startswith(f"Slack answered {status} ")
    assert result.response_excerpt == "oops"


@pytest.mark.parametrize(
    ("status", "text", "reason", "disable"),
    [
        (
            404,
            "no_service",
            "Slack says no_service: the incoming webhook was removed or its Slack app uninstalled",
            True,
        ),
        (
            410,
            "channel_is_archived",
            "Slack says channel_is_archived: the channel is archived",
            True,
        ),
        (
            404,
            "channel_not_found",
            "Slack says channel_not_found: the channel does not exist or the bot cannot see it",
            True,
        ),
        (
            403,
            "action_prohibited",
            "Slack says action_prohibited: an admin has restricted posting to this channel",
            True,
        ),
        (410, "", "Slack answered 410 Gone", True),
        (404, "something_new", "Slack answered 404 Not Found (something_new)", True),
        (
            400,
            "invalid_payload",
            "Slack says invalid_payload: the message was malformed; "
            "this is a bug in jobs-bridge, please report it",
            False,
        ),
    ],
)
async def test_webhook_refusals(
    status: int, text: str, reason: str, disable: bool, slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("webhook")
    slack.fake.webhook_error = (status, text)
    result = await deliver(sink, job_event("failed"))
    assert (result.ok, result.status, result.retryable, result.disable) == (
        False,
        status,
        False,
        disable,
    )
    assert result.reason == reason
    assert_no_secret(result.reason + result.response_excerpt)


async def test_bot_channel_not_found_disables(slack: Slack, sink_for: SinkFactory) -> None:
    sink = await sink_for("bot", channel="#nope")
    result = await deliver(sink, job_event("failed"))
    assert (result.ok, result.status, result.retryable, result.disable) == (False, 200, False, True)
    assert result.reason == (
        "Slack says channel_not_found: the channel does not exist or the bot cannot see it"
    )


async def test_bot_archived_channel_disables(slack: Slack, sink_for: SinkFactory) -> None:
    slack.fake.archived = {"C0OPS"}
    result = await deliver(await sink_for("bot"), job_event("failed"))
    assert (result.retryable, result.disable) == (False, True)
    assert result.reason == "Slack says is_archived: the channel is archived"


async def test_bot_bad_token_disables_and_stays_secret(slack: Slack, sink_for: SinkFactory) -> None:
    slack.fake.token = "xoxb-the-right-one"
    with capture_logs() as logs:
        result = await deliver(await sink_for("bot"), job_event("failed"))
    assert (result.ok, result.retryable, result.disable) == (False, False, True)
    assert result.reason == "Slack says invalid_auth: the bot token is not valid"
    assert_no_secret(result.reason + result.response_excerpt + repr(logs))


async def test_refused_blocks_are_our_bug_not_a_dead_channel(
    slack: Slack, sink_for: SinkFactory
) -> None:
    sink = await sink_for("bot")
    slack.fake.faults = [
        Fault(
            200,
            {
                "ok": False,
                "error": "invalid_blocks",
                "response_metadata": {"messages": ["[ERROR] must be less than 151 characters"]},
            },
        )
    ]
    result = await deliver(sink, job_event("failed"))
    assert (result.ok, result.retryable, result.disable) == (False, False, False)
    assert result.reason == (
        "Slack says invalid_blocks: the message blocks were refused "
        "([ERROR] must be less than 151 characters); this is a bug in jobs-bridge, please report it"
    )


async def test_connection_refused_is_retryable_and_hides_the_url(
    redis_client: aioredis.Redis,
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SlackSink(
        "closed",
        redis_client,
        webhook_url=f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        allow_private_networks=True,
    )
    await sink.start()
    try:
        result = await deliver(sink, job_event("success"))
    finally:
        await sink.close()
    assert (result.ok, result.status, result.retryable, result.disable) == (
        False,
        None,
        True,
        False,
    )
    assert result.reason.startswith(f"could not connect to 127.0.0.1:{port}")
    assert_no_secret(result.reason)


@pytest.mark.parametrize("mode", ["webhook", "bot"])
async def test_slow_slack_times_out_retryably(
    mode: str, slack: Slack, sink_for: SinkFactory
) -> None:
    slack.fake.delay = 2.0
    sink = await sink_for(mode, timeout=0.2)
    result = await deliver(sink, job_event("failed"))
    assert (result.ok, result.status, result.retryable, result.disable) == (
        False,
        None,
        True,
        False,
    )
    assert result.reason == "timed out after 0.2 s"


async def test_private_address_is_refused_by_the_guard(slack: Slack, sink_for: SinkFactory) -> None:
    sink = await sink_for("bot", allow_private_networks=False)
    result = await deliver(sink, job_event("failed"))
    assert (result.ok, result.retryable, result.disable) == (False, False, False)
    assert result.reason.startswith("refused 127.0.0.1 (loopback)")
    assert slack.fake.messages == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "set webhook_url (incoming webhook) or token + channel (bot)"),
        ({"webhook_url": "https://hooks.slack.com/x", "token": "xoxb-1"}, "not both"),
        ({"token": "xoxb-1"}, "channel is required with token (bot mode)"),
        ({"webhook_url": "ftp://hooks.slack.com/x"}, "must be a URL starting with http://"),
        ({"webhook_url": "https://h.example/x", "link_template": "{job}"}, "unknown placeholder"),
        (
            {"webhook_url": "https://h.example/x", "link_template": "jobs/{job_id}"},
            "must be a URL starting with http://",
        ),
    ],
)
def test_constructor_refuses_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    # The subscription's model is where settings are checked; the sink is built from it.
    with pytest.raises(ValueError, match=re.escape(message)):
        SlackSubscription(name="bad", **kwargs)
