"""The state of one fake Elastic Path store: its jobs, tokens, settings, faults and counters."""

from __future__ import annotations

import math
import random
import secrets
import time
from collections import Counter, deque
from dataclasses import fields
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from bridge.simulator.faults import Faults, check_fault
from bridge.simulator.model import ORDERS, JobBook, SimJob
from bridge.simulator.render import (
    DEFAULT_BASE_URL,
    TIMESTAMP_STYLES,
    V2_STATUS_STYLES,
    render_pcm,
    render_v2,
)
from bridge.simulator.traffic import Traffic

log = structlog.get_logger(__name__)

REQUEST_LOG_SIZE = 100_000


class Simulator:
    """The state of a fake Elastic Path store: jobs, tokens, faults, settings and counters."""

    def __init__(
        self,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        token_lifetime: float = 3600,
        order: str = "newest",
        seed: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self._initial = {"token_lifetime": token_lifetime, "order": order}
        # Every random draw (ids, orders, faults, traffic) comes from here: a seed replays a run.
        self.rng = random.Random(seed)
        self.traffic = Traffic(self)
        self._set_defaults()
        self.configure(order=order, token_lifetime=token_lifetime)

    def _set_defaults(self) -> None:
        self.book = JobBook(self.rng)
        self.tokens: dict[str, float] = {}  # token -> wall-clock expiry
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self.request_log: deque[tuple[float, str]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.tokens_issued = 0
        self.order = "newest"
        self.timestamp_style = "iso"
        self.v2_status_style = "lower"
        self.started_null_quirk = False
        self.include_links = True
        self.token_reply_wrapped = False

    def reset(self) -> None:
        """Back to the state of a new simulator (same credentials); traffic keeps running."""
        self._set_defaults()
        self.configure(**self._initial)
        log.info("sim_reset")

    # Settings and faults

    @property
    def token_lifetime(self) -> float:
        return self.faults.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: float) -> None:
        self.faults.token_lifetime = check_fault("token_lifetime", value)

    def settings(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "timestamp_style": self.timestamp_style,
            "v2_status_style": self.v2_status_style,
            "started_null_quirk": self.started_null_quirk,
            "include_links": self.include_links,
            "token_reply_wrapped": self.token_reply_wrapped,
            "token_lifetime": self.token_lifetime,
        }

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings by name (see `settings()`); ValueError names the bad one."""
        choices = {
            "order": ORDERS,
            "timestamp_style": TIMESTAMP_STYLES,
            "v2_status_style": V2_STATUS_STYLES,
        }
        flags = ("started_null_quirk", "include_links", "token_reply_wrapped")
        checked: dict[str, Any] = {}
        for name, value in settings.items():
            if name in choices:
                if value not in choices[name]:
                    raise ValueError(f"{name} must be one of {', '.join(choices[name])}")
            elif name in flags:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif name == "token_lifetime":
                value = check_fault(name, value)
            else:
                known = ", ".join(sorted([*choices, *flags, "token_lifetime"]))
                raise ValueError(f"unknown setting {name!r}; known: {known}")
            checked[name] = value
        # Validate everything first so that a bad request changes nothing.
        for name, value in checked.items():
            setattr(self, name, value)
        return self.settings()

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault fields by name (see `Faults`); ValueError names the bad one."""
        known = {f.name for f in fields(Faults)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown fault field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        checked = {name: check_fault(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self.faults, name, value)
        log.info("sim_faults_set", **checked)
        return self.faults

    # Jobs: see `JobBook` for what each move does.

    @property
    def jobs(self) -> dict[str, SimJob]:
        return self.book.jobs

    def create_job(
        self,
        source: str = "pcm",
        job_type: str | None = None,
        status: str = "pending",
        meta: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Add a job and walk it to `status`; `job_type` defaults to product-import/order_export."""
        return self.book.create(source, job_type, status, meta, created_at)

    def bulk_create(
        self,
        count: int,
        source: str = "pcm",
        status: str = "success",
        job_type: str | None = None,
    ) -> list[str]:
        """Add `count` finished (or `status`) jobs quickly, created one second apart up to now."""
        return self.book.bulk_create(count, source, status, job_type)

    def set_status(self, job_id: str, status: str, *, force: bool = False) -> None:
        """Move a job as the real API does; `force=True` allows any transition."""
        self.book.set_status(job_id, status, force=force)

    def add_errors(self, job_id: str, messages: object) -> None:
        """Attach `pim-job-error` records to a job, as a failed import has."""
        self.book.add_errors(job_id, messages)

    def expire(self, job_id: str) -> None:
        """Forget a job, as the API does a week after creation: later reads give 404."""
        self.book.expire(job_id)

    def pcm_jobs_in_order(self) -> list[SimJob]:
        """PCM jobs in the order `GET /pcm/jobs` lists them right now."""
        return self.book.pcm_in_order(self.order)

    # Rendering

    def record(self, job_id: str, base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
        """The job exactly as `GET /pcm/jobs/{id}` or `GET /v2/jobs/{id}` puts it in `data`."""
        return self.render(self.book.get(job_id), base_url)

    def render(self, job: SimJob, base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
        if job.source == "pcm":
            return render_pcm(job, self.timestamp_style, self.started_null_quirk)
        return render_v2(job, base_url, self.v2_status_style)

    # Tokens

    def issue_token(self) -> dict[str, Any]:
        """A new bearer token in the flat shape every SDK reads."""
        now = time.time()
        lifetime = self.token_lifetime
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_hex(20)
        self.tokens[token] = now + lifetime
        self.tokens_issued += 1
        log.debug("sim_token_issued", expires_in=lifetime)
        return {
            "expires": int(now + lifetime),
            "identifier": "client_credentials",
            "expires_in": math.ceil(lifetime),
            "access_token": token,
            "token_type": "Bearer",
        }

    def token_valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        if expiry is None:
            return False
        if expiry <= time.time():
            del self.tokens[token]
            return False
        return True

    # Counters

    def count_request(self, route: str) -> None:
        self.requests[route] += 1
        self.request_log.append((time.monotonic(), route))

    def requests_in_last(self, seconds: float, route: str | None = None) -> int:
        """How many API requests (of `route`, or all) arrived in the last `seconds`."""
        since = time.monotonic() - seconds
        total = 0
        for at, name in reversed(self.request_log):
            if at < since:
                break
            if route is None or name == route:
                total += 1
        return total

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "tokens_issued": self.tokens_issued,
            "jobs": len(self.jobs),
            "traffic_rate": self.traffic_rate,
        }

    # Traffic: see `Traffic`.

    @property
    def traffic_rate(self) -> float:
        return self.traffic.rate

    def start_traffic(self, rate: float) -> None:
        """Create `rate` jobs per second and walk each to an end; needs a running event loop."""
        self.traffic.start(rate)

    def stop_traffic(self) -> None:
        """Cancel the traffic loop and every job walk in flight (see `aclose` to wait)."""
        self.traffic.stop()

    async def aclose(self) -> None:
        """Stop traffic and wait until its tasks have ended."""
        await self.traffic.aclose()


SIMULATOR = web.AppKey("simulator", Simulator)
