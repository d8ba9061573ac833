"""Log set-up: stdlib logging (aiohttp, asyncio) comes out as JSON, with secrets masked."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from bridge import logs

SECRET = "s3cr3t-client-value-42"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Logging as in production. Set up by each test: capsys swaps sys.stdout only for the test."""
    root = logging.getLogger()
    level = root.level
    logs.register_secrets([SECRET])
    try:
        yield capsys
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs._StdlibHandler)]:
            root.removeHandler(handler)
        root.setLevel(level)
        logs._known_secrets.discard(SECRET)
        structlog.reset_defaults()


def production() -> None:
    logs.setup("info", json_output=True)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_a_stdlib_line_is_json_and_masks_a_configured_secret(json_logs) -> None:
    production()
    logging.getLogger("aiohttp.client").warning("POST with client_secret=%s failed", SECRET)
    [line] = lines(json_logs)
    assert SECRET not in json.dumps(line)
    assert line["event"] == f"POST with client_secret={logs.REDACTED} failed"
    assert line["level"] == "warning"
    assert line["logger"] == "aiohttp.client"
    assert "timestamp" in line


def test_a_stdlib_traceback_is_json_and_masked(json_logs) -> None:
    production()
    try:
        raise RuntimeError(f"token {SECRET} rejected")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    [line] = lines(json_logs)
    assert SECRET not in json.dumps(line)
    assert line["event"] == "Error handling request"
    assert line["level"] == "error"
    [frame] = line["exception"]
    assert frame["exc_type"] == "RuntimeError"
    assert logs.REDACTED in frame["exc_value"]


async def test_task_exception_never_retrieved_comes_out_as_json(json_logs) -> None:
    production()
    production()

    async def fails() -> None:
        raise ValueError(f"bad secret {SECRET}")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    del task
    gc.collect()
    found = [line for line in lines(json_logs) if line.get("logger") == "asyncio"]
    assert found, "asyncio reported nothing"
    assert found[0]["event"].startswith("Task exception was never retrieved")
    assert SECRET not in json.dumps(found)


def test_the_level_applies_to_stdlib_lines_and_setup_twice_keeps_one_handler(json_logs) -> None:
    production()
    logs.setup("warning", json_output=True)
    logging.getLogger("aiohttp.access").info("GET / 200")
    logging.getLogger("aiohttp.access").warning("slow")
    assert [line["event"] for line in lines(json_logs)] == ["slow"]
    mine = [h for h in logging.getLogger().handlers if isinstance(h, logs._StdlibHandler)]
    assert len(mine) == 1


def test_structlog_lines_are_unchanged(json_logs) -> None:
    production()
    structlog.get_logger("bridge.test").info("token_refreshed", client_secret=SECRET)
    [line] = lines(json_logs)
    assert line["event"] == "token_refreshed"
    assert line["client_secret"] == logs.REDACTED
