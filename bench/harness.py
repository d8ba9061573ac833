"""What the benchmarks share: the machine they ran on, helper processes, timing, results and plots.

A benchmark script imports this module (`import harness`: scripts run as `python bench/x.py`,
which puts bench/ on the path). Numbers go to stdout and, with the machine, date and command,
to `bench/results/<name>.json`; plots to `bench/results/<name>.png`. With `BENCH_QUICK=1` a
script runs a smaller version and writes under `bench/results/quick/` instead, so a smoke run
never replaces the published results.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
RESULTS = Path(__file__).resolve().parent / "results" / ("quick" if QUICK else "")
SECRET = "whsec_" + base64.b64encode(b"jobs-bridge benchmark secret!!").decode()
VERIFY_EVERY = 50  # the receiver checks the signature of every 50th signed request

# Colours of the same peer in every plot.
BRIDGE_COLOUR = "#1f77b4"
PEER_COLOUR = "#7f7f7f"
ACCENT_COLOUR = "#ff7f0e"


def quick(full: Any, smoke: Any) -> Any:
    """`smoke` under BENCH_QUICK=1, else `full`."""
    return smoke if QUICK else full


def quiet_logs() -> None:
    """Warnings and errors only, on stderr: the bridge's info lines would drown the numbers."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- numbers -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def spread(values: Sequence[float], *, higher_is_better: bool = True) -> dict[str, Any]:
    """Best, worst and median of repeated measurements, and every run."""
    best = max(values) if higher_is_better else min(values)
    worst = min(values) if higher_is_better else max(values)
    return {"best": best, "worst": worst, "median": statistics.median(values), "runs": list(values)}


def show_spread(s: dict[str, Any], fmt: str = ",.0f") -> str:
    """`6,815 (6,102-6,815, 3 runs)`: the best, then the range."""
    low, high = sorted((s["best"], s["worst"]))
    return f"{s['best']:{fmt}} ({low:{fmt}}-{high:{fmt}}, {len(s['runs'])} runs)"


class Stopwatch:
    """Wall-clock seconds, and CPU seconds of this process, from creation to `stop()`.

    CPU time per operation is the steadier number on a shared machine: other processes
    stretch the wall clock far more than they change what this process itself spends.
    """

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self.wall = self.cpu = 0.0

    def stop(self) -> Stopwatch:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        return self


# -- the machine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Machine:
    """What a reader needs to judge a number: where, when, how it was made, and how busy."""

    cpu: str
    cores: int
    python: str
    redis: str
    date: str  # UTC, minutes
    command: str
    load_before: float  # 1-minute load average when the script started

    def footer(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, Python {self.python}, Redis {self.redis}; "
            f"load average {self.load_before:.1f} at start; {self.date}\nmade by: {self.command}"
        )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


async def describe_machine(redis: Any = None) -> Machine:
    """This machine now; `redis` (a client) adds the server's version."""
    version = "?"
    if redis is not None:
        version = str((await redis.info("server")).get("redis_version", "?"))
    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        python=platform.python_version(),
        redis=version,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command_line(),
        load_before=os.getloadavg()[0],
    )


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path(__file__).resolve().parent.parent)
    env = "BENCH_QUICK=1 " if QUICK else ""
    return f"{env}python {shlex.join([str(script), *sys.argv[1:]])}"


# -- results and plots ---------------------------------------------------------------------


def write_results(name: str, machine: Machine, data: dict[str, Any]) -> Path:
    """`bench/results/<name>.json`: the numbers with the machine, date and command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"machine": asdict(machine), "load_after": os.getloadavg()[0], **data}
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    print(f"numbers: {_shown(path)}")
    return path


def plot(
    name: str, machine: Machine, title: str, draw: Callable[[Any], None], *, panels: int = 1
) -> Path | None:
    """Draw `panels` side-by-side axes with `draw(axes)`, sign with the machine, save a PNG.

    Without matplotlib (the `bench` extra) the numbers are still written: the plot is skipped.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return None
    fig, axes = plt.subplots(1, panels, figsize=(max(8.0, 6.4 * panels), 5.0), squeeze=False)
    draw(axes[0] if panels > 1 else axes[0][0])
    fig.suptitle(title, fontsize=11)
    fig.text(0.01, 0.01, machine.footer(), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {_shown(path)}")
    return path


def cdf(axis: Any, values: Sequence[float], **style: Any) -> None:
    """A step CDF of `values` on `axis`."""
    ordered = sorted(values)
    n = len(ordered)
    axis.step(ordered, [(i + 1) / n for i in range(n)], where="post", **style)


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


# -- helper processes ----------------------------------------------------------------------


@contextlib.contextmanager
def process(target: Callable[..., None], *args: Any) -> Iterator[None]:
    """Run `target(*args)` in a process of its own (spawned: nothing shared) for the block."""
    child = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    child.start()
    try:
        yield
    finally:
        child.terminate()
        child.join(5)


def serve_receiver(port: int, secret: str) -> None:
    """A webhook endpoint: counts, timestamps first arrivals, spot-checks signatures.

    After `POST /reset?keep=1` it also keeps each first body, for benchmarks that read events.
    """
    from aiohttp import web
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    webhook = Webhook(secret)
    state: dict[str, Any] = {"count": 0, "verified": 0, "bad": 0, "first": {}, "keep": False}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        state["count"] += 1
        event_id = request.headers.get("webhook-id") or request.headers.get("x-id")
        if event_id is not None and event_id not in state["first"]:
            state["first"][event_id] = [arrived, body.decode()] if state["keep"] else arrived
        if request.headers.get("webhook-id") and state["count"] % VERIFY_EVERY == 0:
            try:
                webhook.verify(body, dict(request.headers))
                state["verified"] += 1
            except WebhookVerificationError:
                state["bad"] += 1
        return web.Response(status=204)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({k: state[k] for k in ("count", "verified", "bad")})

    async def arrivals(_request: web.Request) -> web.Response:
        return web.json_response(state["first"])

    async def reset(request: web.Request) -> web.Response:
        state.update(count=0, verified=0, bad=0, first={}, keep=request.query.get("keep") == "1")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{n}", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Receiver:
    """The benchmark's view of the receiver process; `url(n)` is destination n's endpoint."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()

    def url(self, n: int = 0) -> str:
        return f"{self.base}/hook/{n}"

    async def wait_ready(self) -> None:
        await wait_answering(self.session, f"{self.base}/stats")

    async def stats(self) -> dict[str, int]:
        async with self.session.get(f"{self.base}/stats") as response:
            return await response.json()

    async def arrivals(self) -> dict[str, Any]:
        """Event id -> first arrival (epoch seconds), or [arrival, body] after reset(keep=True)."""
        async with self.session.get(f"{self.base}/arrivals") as response:
            return await response.json()

    async def last_arrival(self) -> float:
        """When (epoch seconds) the latest first arrival came."""
        values = (await self.arrivals()).values()
        return max(v[0] if isinstance(v, list) else v for v in values)

    async def reset(self, *, keep: bool = False) -> None:
        async with self.session.post(f"{self.base}/reset", params={"keep": "1" if keep else "0"}):
            pass

    async def wait_for(self, count: int, within: float = 60.0) -> float:
        """Wait until `count` requests arrived; returns when (time.perf_counter()) it saw them."""
        deadline = time.monotonic() + within
        while (await self.stats())["count"] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got fewer than {count} requests in {within} s")
            await asyncio.sleep(0.005)
        return time.perf_counter()

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def receiver() -> Any:
    """A receiver process for the block, ready to take requests."""
    port = free_port()
    with process(serve_receiver, port, SECRET):
        client = Receiver(port)
        try:
            await client.wait_ready()
            yield client
        finally:
            await client.close()


async def wait_answering(session: aiohttp.ClientSession, url: str, tries: int = 400) -> None:
    """Wait until `url` answers a GET at all (a helper process is up)."""
    for _ in range(tries):
        try:
            async with session.get(url):
                return
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing answered at {url}")


# -- the bridge ----------------------------------------------------------------------------


def bridge_config(
    store: str, hooks: Sequence[str], *, api_base: str = "http://127.0.0.1:9", **settings: Any
) -> Any:
    """A validated config: one store (its `settings` as in the config file) polling the
    simulator at `api_base`, and a signed webhook subscription `hook-<n>` per URL in `hooks`."""
    from bridge.config import parse_config

    data = {
        "redis": {"url": REDIS_URL},
        "allow_private_networks": True,
        "stores": [
            {
                "name": store,
                "api_base": api_base,
                "client_id": SimulatorClient.client_id,
                "client_secret": SimulatorClient.client_secret,
                **settings,
            }
        ],
        "subscriptions": [
            {"name": f"hook-{n}", "type": "webhook", "url": url, "secrets": [SECRET]}
            for n, url in enumerate(hooks)
        ],
    }
    return parse_config(json.dumps(data), environ={})


async def wait_for_baseline(store: Any, source: str = "pcm", within: float = 60.0) -> None:
    """Wait until the poller of `store` (a bridge.store.Store) has completed its baseline."""
    deadline = time.monotonic() + within
    while await store.get_meta(f"baseline:{source}") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the baseline did not complete")
        await asyncio.sleep(0.05)


# -- the simulated Jobs API, in a process of its own -----------------------------------------


def serve_simulator(port: int, seed: int, history: int, traffic: float) -> None:
    """The fake Jobs API with `history` finished jobs and `traffic` new jobs a second.

    Two benchmark routes beside the simulator's own, both answering when (epoch seconds) they
    were done: `POST /_sim/bench/jobs {"count": n, "status": s}` creates n PCM jobs in status
    s, the newest of all; `POST /_sim/bench/finish {"status": s}` moves every job they made
    to s in one go.
    """
    from aiohttp import web

    from bridge.simulator import Simulator, make_app

    quiet_logs()
    sim = Simulator(seed=seed)
    sim.bulk_create(history)
    made: list[str] = []

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        made.extend(sim.create_job(status=body["status"]) for _ in range(int(body["count"])))
        return web.json_response({"at": time.time()})

    async def finish(request: web.Request) -> web.Response:
        status = (await request.json())["status"]
        for job_id in made:
            sim.set_status(job_id, status)
        made.clear()
        return web.json_response({"at": time.time()})

    async def start_traffic(_app: web.Application) -> None:
        sim.start_traffic(traffic)

    app = make_app(sim)
    app.router.add_post("/_sim/bench/jobs", create)
    app.router.add_post("/_sim/bench/finish", finish)
    if traffic > 0:
        app.on_startup.append(start_traffic)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class SimulatorClient:
    """The benchmark's view of the simulator process: its URL, credentials and controls."""

    client_id = "sim-client"
    client_secret = "sim-secret"

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()

    async def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.post(f"{self.base}/_sim/{path}", json=body or {}) as response:
            response.raise_for_status()
            return await response.json()

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_sim/stats") as response:
            return await response.json()

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def simulator(*, seed: int = 13, history: int = 1000, traffic: float = 0.0) -> Any:
    """A simulator process for the block, ready to answer."""
    port = free_port()
    with process(serve_simulator, port, seed, history, traffic):
        client = SimulatorClient(port)
        try:
            await wait_answering(client.session, f"{client.base}/_sim/stats")
            yield client
        finally:
            await client.close()
