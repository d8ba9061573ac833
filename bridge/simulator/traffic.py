"""Traffic generation: new jobs at a steady rate, each walked to an end as the real API would."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from bridge.simulator.model import PCM_TYPES

if TYPE_CHECKING:
    from bridge.simulator.state import Simulator

log = structlog.get_logger(__name__)

# Messages seen in the docs and in real imports; traffic mode draws from them.
ERROR_MESSAGES = (
    "data.attributes.sku: Must be unique amongst products.",
    "slug must be URL compatible.",
    "data.attributes.name: Must be a string.",
    "data.attributes.commodity_type: Must be one of the following: physical, digital.",
    "row 14: price amount must be a non-negative integer.",
    "hierarchy not found",
)


class Traffic:
    """The background tasks that keep a simulator busy: one loop, and one walk per job."""

    def __init__(self, sim: Simulator) -> None:
        # The simulator, not its jobs: a reset replaces those, and the walks must see it.
        self._sim = sim
        self._tasks: set[asyncio.Task[None]] = set()
        self.rate = 0.0

    def start(self, rate: float) -> None:
        """Create `rate` jobs per second and walk each to an end; needs a running event loop."""
        self.stop()
        if rate <= 0:
            return
        self.rate = rate
        self._spawn(self._loop(rate))
        log.info("sim_traffic_started", rate=rate)

    def stop(self) -> None:
        """Cancel the traffic loop and every job walk in flight (see `aclose` to wait)."""
        if not self._tasks:
            return
        for task in self._tasks:
            task.cancel()
        self.rate = 0.0
        log.info("sim_traffic_stopped")

    async def aclose(self) -> None:
        """Stop traffic and wait until its tasks have ended."""
        tasks = list(self._tasks)
        self.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _loop(self, rate: float) -> None:
        # The real API runs one job at a time per organisation; overlapping them here keeps
        # the demo lively. Delays shrink with the rate so a fast run still finishes jobs.
        scale = 1.0 / max(rate, 1.0)
        while True:
            self._spawn(self._walk_new_job(scale))
            await asyncio.sleep(self._sim.rng.uniform(0.5, 1.5) / rate)

    async def _walk_new_job(self, scale: float) -> None:
        sim, rng = self._sim, self._sim.rng
        if rng.random() < 0.1:
            job_id = sim.create_job("v2", "order_export")
        else:
            job_type = rng.choice(PCM_TYPES)
            meta = {"filter": "eq(sku,product-1)"} if job_type == "product-export" else None
            job_id = sim.create_job("pcm", job_type, meta=meta)
        try:
            await asyncio.sleep(rng.uniform(0.5, 3.0) * scale)
            draw = rng.random()
            if draw < 0.05 and sim.jobs[job_id].source == "pcm":
                sim.set_status(job_id, "cancelled")
                return
            sim.set_status(job_id, "started")
            await asyncio.sleep(rng.uniform(1.0, 5.0) * scale)
            if draw < 0.25:
                if sim.jobs[job_id].source == "pcm":
                    sim.add_errors(job_id, rng.sample(ERROR_MESSAGES, rng.randint(1, 3)))
                sim.set_status(job_id, "failed")
            else:
                sim.set_status(job_id, "success")
        except (KeyError, ValueError):
            # Expired, reset or forced elsewhere meanwhile: the walk has nothing left to do.
            log.debug("sim_traffic_walk_abandoned", job_id=job_id)
