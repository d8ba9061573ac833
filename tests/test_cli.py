"""The real program as a user runs it: `run` stops cleanly on signals, `demo` needs no config."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.simulator import Simulator, make_app

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write_config(path: Path, api_base: str, redis_url: str | None) -> Path:
    redis = f"redis: {{url: '{redis_url}'}}\n" if redis_url else ""
    path.write_text(
        f"""{redis}data_dir: {path.parent / "var"}
stores:
  - name: cli
    api_base: {api_base}
    client_id: sim-client
    client_secret: ${{EP_SECRET:-sim-secret}}
    poll_interval: 100ms
    idle_poll_interval: 200ms
    max_requests_per_second: 50
subscriptions:
  - name: nowhere
    type: webhook
    url: http://127.0.0.1:9/hooks
    secrets: [{SECRET}]
    allow_private_networks: true
"""
    )
    return path


async def start_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def wait_for_line(stream: asyncio.StreamReader, needle: str) -> str:
    async def scan() -> str:
        while line := (await stream.readline()).decode():
            if needle in line:
                return line
        raise AssertionError(f"stream ended before {needle!r}")

    return await asyncio.wait_for(scan(), 20)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_emits_events_and_stops_cleanly_on_signal(
    aiohttp_server, tmp_path, redis_url, redis_client, signum
):
    sim = Simulator()
    server = await aiohttp_server(make_app(sim))
    api_base = str(server.make_url("")).rstrip("/")
    config = write_config(tmp_path / "bridge.yaml", api_base, redis_url)
    process = await start_process("--json-logs", "run", "-c", str(config))
    try:
        await wait_for_line(process.stdout, "baseline_completed")
        job_id = sim.create_job()
        line = await wait_for_line(process.stdout, "event_emitted")
        assert job_id in line and "com.elasticpath.pcm.job.pending" in line
        assert "sim-secret" not in line
        process.send_signal(signum)
        out, _err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0
        assert b"bridge_stopped" in out
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_run_with_embedded_redis_keeps_state_across_restarts(aiohttp_server, tmp_path):
    sim = Simulator()
    server = await aiohttp_server(make_app(sim))
    config = write_config(tmp_path / "bridge.yaml", str(server.make_url("")).rstrip("/"), None)
    job_id = sim.create_job()
    for round_ in range(2):
        process = await start_process("--json-logs", "run", "-c", str(config))
        try:
            if round_ == 0:
                await wait_for_line(process.stdout, "baseline_completed")
                sim.set_status(job_id, "started")
                assert job_id in await wait_for_line(process.stdout, "event_emitted")
            else:
                # Same data_dir: the baseline and the job's state survived the restart.
                sim.set_status(job_id, "success")
                line = await wait_for_line(process.stdout, "event_emitted")
                assert "job.success" in line
            process.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(process.communicate(), 20)
            assert process.returncode == 0, err.decode()
            if round_ == 1:
                assert b"baseline_completed" not in out
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert any((tmp_path / "var" / "redis").glob("appendonly*"))
    # An operator reads the same state, with the bridge stopped, through its embedded Redis.
    process = await start_process("status", "-c", str(config))
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert "cli/pcm  baseline: done" in out.decode()
    assert "open jobs: 0  known jobs: 1" in out.decode()
    assert "cli outbox: 2 event(s) kept, 0 not yet dispatched" in out.decode()


def test_bad_config_exits_nonzero_with_a_readable_message(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("stores:\n  - name: Bad Name\n    api_base: ftp://x\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "stores[0].name" in result.stderr and "stores[0].api_base" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_with_no_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--seconds", "6", "--rate", "4"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " seq " in line]
    assert lines, result.stdout
    assert "0 rejected signature(s)" in result.stdout
    assert "Traceback" not in result.stderr
