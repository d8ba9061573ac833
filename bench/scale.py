"""Benchmark: many simulated stores polled by 1 and by 3 `jobs-bridge run` replicas, idle and busy.

Run: `python bench/scale.py [--stores 200] [--rate 0.05] [--replicas 1,3]` (Redis at
REDIS_URL, default redis://127.0.0.1:6379/14, flushed before each run and at the end). About
three minutes with the defaults; writes bench/results/scale.{json,png}.

One simulator process serves every store, each on its own port; a webhook receiver in this
process records when each event arrives. The replicas use the default poll intervals (5 s while
jobs move, 30 s when idle) and lease_ttl. Per run it prints the leases each replica holds, the
API requests per minute of all replicas together, CPU (% of one core) and RSS of each replica,
change -> receipt latency (from the transition's own timestamp in the simulator to the webhook's
arrival here), and the gaps between two polls of a store (as the simulator saw them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import harness
import redis.asyncio as aioredis
from aiohttp import web
from harness import ACCENT_COLOUR, BRIDGE_COLOUR

from bridge import logs
from bridge.leasestore import holder
from bridge.simulator import Simulator, make_app

REDIS_URL = harness.REDIS_URL
HISTORY = 20  # finished jobs per store before the bridge starts
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW = harness.quick(30.0, 8.0)  # an idle store polls once in such a window
# The defaults (5 s while jobs move, 30 s idle); a smoke run polls faster to see something.
POLLING = harness.quick({}, {"poll_interval": "1s", "idle_poll_interval": "4s"})
SAME_CYCLE = 1.0  # list requests of one store closer than this belong to one poll cycle
TRANSITION_STAMP = {
    "pending": "created_at",
    "started": "started_at",
    "success": "completed_at",
    "failed": "completed_at",
    "cancelled": "completed_at",
}


# -- the simulator process -------------------------------------------------------------------


async def serve_sims(stores: int, base_port: int, control_port: int) -> None:
    """Every store's simulator on its own port, and a control port for all of them."""
    logs.setup("warning", json_output=True)
    sims = [Simulator(seed=index) for index in range(stores)]
    runners = []
    for index, sim in enumerate(sims):
        sim.bulk_create(HISTORY)
        runner = web.AppRunner(make_app(sim), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", base_port + index).start()
        runners.append(runner)

    async def traffic(request: web.Request) -> web.Response:
        rate = float((await request.json())["rate"])
        for sim in sims:
            sim.start_traffic(rate) if rate > 0 else sim.stop_traffic()
        return web.json_response({"rate": rate})

    async def stats(request: web.Request) -> web.Response:
        since = time.monotonic() - float(request.query.get("window", "0"))
        gaps = [gap for sim in sims for gap in _poll_gaps(sim, since)]
        total = sum(sum(sim.requests.values()) for sim in sims)
        return web.json_response({"requests": total, "gaps": gaps})

    async def reset(_request: web.Request) -> web.Response:
        for sim in sims:
            await sim.aclose()
            sim.reset()
            sim.bulk_create(HISTORY)
        return web.json_response({"reset": True})

    control = web.Application()
    control.router.add_post("/reset", reset)
    control.router.add_post("/traffic", traffic)
    control.router.add_get("/stats", stats)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    await asyncio.Event().wait()


def _poll_gaps(sim: Simulator, since: float) -> list[float]:
    """Seconds between the starts of two poll cycles of one store (its list requests)."""
    starts: list[float] = []
    for at, route in sim.request_log:
        if at >= since and route == "GET /pcm/jobs":
            if not starts or at - starts[-1] > SAME_CYCLE:
                starts.append(at)
    return [b - a for a, b in itertools.pairwise(starts)]


# -- the bench ---------------------------------------------------------------------------------


class Receiver:
    """The webhook endpoint: when each event arrived, after the transition it describes."""

    def __init__(self) -> None:
        self.latencies: list[tuple[float, float]] = []  # (changed at, seconds to arrive)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.time()
        event = json.loads(await request.read())
        data = event["data"]
        stamp = data["job"].get(TRANSITION_STAMP.get(data["status"], ""), None)
        if stamp:
            changed = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            self.latencies.append((changed, arrived - changed))
        return web.Response(status=204)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def config_text(stores: int, base_port: int, hook_url: str) -> str:
    return json.dumps(
        {
            "redis": {"url": REDIS_URL},
            "log_level": "warning",
            "stores": [
                {
                    "name": f"store-{index:04d}",
                    "api_base": f"http://127.0.0.1:{base_port + index}",
                    "client_id": "sim-client",
                    "client_secret": "sim-secret",
                    **POLLING,
                }
                for index in range(stores)
            ],
            "subscriptions": [
                {
                    "name": "receiver",
                    "type": "webhook",
                    "url": hook_url,
                    "secrets": [SECRET],
                    "allow_private_networks": True,
                }
            ],
        }
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def start_process(*args: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=out, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


async def answering(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 120
    while process.returncode is None:
        try:
            async with http.get(url) as reply:
                if reply.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)
    raise aiohttp.ClientConnectionError(f"exited with {process.returncode}")


async def holders(redis: aioredis.Redis, stores: int) -> list[str | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for index in range(stores):
            pipe.get(f"jb:{{store-{index:04d}}}:lease:pcm")
        values = await pipe.execute()
    return [(holder(v) or (0, None))[1] for v in values]


async def settled(redis: aioredis.Redis, stores: int, replicas: int) -> None:
    """Every lease held, no replica above its share, every baseline done."""
    share = -(-stores // replicas)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = await holders(redis, stores)
        counts = [found.count(h) for h in set(found)]
        async with redis.pipeline(transaction=False) as pipe:
            for index in range(stores):
                pipe.hexists(f"jb:{{store-{index:04d}}}:meta", "baseline:pcm")
            baselines = await pipe.execute()
        if None not in found and len(counts) == replicas and max(counts) <= share:
            if all(baselines):
                return
        await asyncio.sleep(0.5)
    raise RuntimeError("the replicas did not settle within 120 s")


def summary(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50, p99 and max of some seconds (None when there are none)."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {
        "count": len(values),
        "p50": round(harness.percentile(values, 50), 3),
        "p99": round(harness.percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


async def measure(
    http: aiohttp.ClientSession,
    control: str,
    redis: aioredis.Redis,
    receiver: Receiver,
    processes: list[asyncio.subprocess.Process],
    stores: int,
    window: float,
) -> dict[str, Any]:
    async with http.get(f"{control}/stats") as reply:
        before = (await reply.json())["requests"]
    cpu_before = [cpu_seconds(p.pid) for p in processes]
    receiver.latencies.clear()
    started, started_at = time.monotonic(), time.time()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - started
    # Gaps since a poll before the window too: an idle store polls once in it.
    lookback = str(elapsed + IDLE_WINDOW)
    async with http.get(f"{control}/stats", params={"window": lookback}) as reply:
        after = await reply.json()
    found = await holders(redis, stores)
    by_pid = {int(h.rsplit("-", 2)[1]): found.count(h) for h in set(found) if h}
    cpu = [cpu_seconds(p.pid) - b for p, b in zip(processes, cpu_before, strict=True)]
    return {
        "leases_held": [by_pid.get(p.pid, 0) for p in processes],
        "api_requests_per_minute": round((after["requests"] - before) * 60 / elapsed),
        "cpu_percent": [round(100 * seconds / elapsed, 1) for seconds in cpu],
        "rss_mib": [round(rss_mib(p.pid)) for p in processes],
        # Changes made in the window: not those of the warm-up, found late by idle polls.
        "change_to_receipt_s": summary(
            [took for changed, took in receiver.latencies if changed >= started_at]
        ),
        "poll_gap_s": summary(after["gaps"]),
    }


def report(run: dict[str, Any]) -> None:
    latency, gaps = run["change_to_receipt_s"], run["poll_gap_s"]
    print(
        f"{run['replicas']} replica(s), {run['kind']:<4}: leases held {run['leases_held']}, "
        f"API {run['api_requests_per_minute']:,} requests/min, "
        f"CPU {', '.join(f'{c:.0f}%' for c in run['cpu_percent'])}, "
        f"RSS {', '.join(f'{r} MiB' for r in run['rss_mib'])}"
    )
    print(
        f"    change -> receipt: {latency['count']} events, p50 {latency['p50']} s, "
        f"p99 {latency['p99']} s; poll gaps: p50 {gaps['p50']} s, p99 {gaps['p99']} s, "
        f"max {gaps['max']} s",
        flush=True,
    )


def lost_leases(directory: Path, replicas: int) -> dict[str, int]:
    """The lease_lost lines of the replicas' logs, by reason."""
    lost: Counter[str] = Counter()
    for index in range(replicas):
        for line in (directory / f"r{index}.log").read_text().splitlines():
            if '"lease_lost"' in line:
                lost[json.loads(line).get("reason", "?")] += 1
    return dict(lost)


async def run_replicas(
    replicas: int,
    config: Path,
    directory: Path,
    http: aiohttp.ClientSession,
    control: str,
    redis: aioredis.Redis,
    receiver: Receiver,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    await redis.flushdb()
    async with http.post(f"{control}/reset"):
        pass  # every store as new: its history only
    processes = [
        await start_process("-m", "bridge", "run", "-c", str(config), log=directory / f"r{i}.log")
        for i in range(replicas)
    ]
    try:
        await settled(redis, args.stores, replicas)
        runs = []
        for kind, rate, window in (("idle", 0.0, IDLE_WINDOW), ("busy", args.rate, args.window)):
            async with http.post(f"{control}/traffic", json={"rate": rate}):
                pass
            if rate:
                await asyncio.sleep(args.warmup)
            found = await measure(http, control, redis, receiver, processes, args.stores, window)
            runs.append({"replicas": replicas, "kind": kind, **found})
            report(runs[-1])
        async with http.post(f"{control}/traffic", json={"rate": 0}):
            pass
        runs[-1]["leases_lost"] = lost = lost_leases(directory, replicas)
        if lost:
            print(f"    leases lost: {lost}")
        return runs
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 60)


async def bench(args: argparse.Namespace) -> None:
    base_port, control_port = args.base_port, args.base_port - 1
    control = f"http://127.0.0.1:{control_port}"
    print(
        f"{args.stores} stores (pcm, {HISTORY} finished jobs each); busy = {args.rate:g} new "
        f"jobs/s per store ({args.rate * args.stores:g}/s in all). Measured over "
        f"{IDLE_WINDOW:g} s idle, then {args.window:g} s busy after {args.warmup:g} s of traffic"
    )
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    machine = await harness.describe_machine(redis)
    runs: list[dict[str, Any]] = []
    receiver = Receiver()
    await receiver.start(base_port - 2)
    with tempfile.TemporaryDirectory(prefix="jb-scale-") as name:
        directory = Path(args.logs or name)
        config = directory / "bridge.json"
        config.write_text(config_text(args.stores, base_port, receiver.url))
        sims = await start_process(
            __file__, "serve-sims", str(args.stores), str(base_port), str(control_port),
            log=directory / "sims.log",
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as http:
                try:
                    await answering(http, f"{control}/stats", sims)
                except aiohttp.ClientConnectionError:
                    sys.exit(
                        f"the simulators did not start:\n{(directory / 'sims.log').read_text()}"
                    )
                sim_cpu, started = cpu_seconds(sims.pid), time.monotonic()
                for replicas in args.replicas:
                    runs += await run_replicas(
                        replicas, config, directory, http, control, redis, receiver, args
                    )
            load = 100 * (cpu_seconds(sims.pid) - sim_cpu) / (time.monotonic() - started)
            print(f"(the simulator process used {load:.0f}% of one core meanwhile)")
            settings = {k: v for k, v in vars(args).items() if k != "logs"}
            data = {"settings": {**settings, "idle_window": IDLE_WINDOW}, "runs": runs}
            harness.write_results("scale", machine, {**data, "simulator_cpu_percent": load})
            harness.plot("scale", machine, title(args), lambda axes: draw(axes, runs), panels=2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                sims.kill()
            await sims.wait()
            await receiver.stop()
            await redis.flushdb()
            await redis.aclose()


def title(args: argparse.Namespace) -> str:
    return (
        f"{args.stores} stores on 1 and 3 replicas (idle; busy: {args.rate * args.stores:g} "
        "new jobs/s in all): the API sees the requests of one"
    )


def draw(axes: Any, runs: list[dict[str, Any]]) -> None:
    """Left: API requests per minute and total CPU per run; right: change -> receipt."""
    names = [f"{run['replicas']} replica(s)\n{run['kind']}" for run in runs]
    at = range(len(runs))
    left, right = axes
    left.bar([x - 0.2 for x in at], [run["api_requests_per_minute"] for run in runs], 0.4,
             color=BRIDGE_COLOUR, label="API requests / min")  # fmt: skip
    left.set_xticks(list(at), names)
    left.set_ylabel("API requests per minute, all replicas")
    cpu = left.twinx()
    cpu.bar([x + 0.2 for x in at], [sum(run["cpu_percent"]) for run in runs], 0.4,
            color=ACCENT_COLOUR, label="CPU, all replicas (% of a core)")  # fmt: skip
    cpu.set_ylabel("CPU of all replicas (% of one core)")
    left.legend(loc="upper left", fontsize=8)
    cpu.legend(loc="upper right", fontsize=8)
    busy = [run for run in runs if run["change_to_receipt_s"]["count"]]
    for offset, (key, colour) in enumerate((("p50", BRIDGE_COLOUR), ("p99", ACCENT_COLOUR))):
        right.bar([x + 0.4 * offset for x in range(len(busy))],
                  [run["change_to_receipt_s"][key] for run in busy], 0.4, color=colour,
                  label=f"change -> receipt {key}")  # fmt: skip
    right.set_xticks([x + 0.2 for x in range(len(busy))],
                     [f"{run['replicas']} replica(s), busy" for run in busy])  # fmt: skip
    right.set_ylabel("seconds from the change in the API to the webhook")
    right.legend(fontsize=8)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-sims":
        stores, base_port, control_port = map(int, sys.argv[2:5])
        asyncio.run(serve_sims(stores, base_port, control_port))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", type=int, default=harness.quick(200, 20))
    parser.add_argument("--logs", default=None, help="keep the processes' logs in this folder")
    parser.add_argument("--rate", type=float, default=0.05, help="new jobs/s per store, busy")
    parser.add_argument(
        "--window", type=float, default=harness.quick(20.0, 8.0), help="seconds measured, busy"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=harness.quick(25.0, 5.0),
        help="seconds of traffic before the busy window (an idle store polls every 30 s)",
    )
    parser.add_argument("--replicas", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 3], help="e.g. 1,3")  # fmt: skip
    # Below the ephemeral range (32768+), where outgoing connections would take ports at random.
    parser.add_argument("--base-port", type=int, default=26001)
    args = parser.parse_args()
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
