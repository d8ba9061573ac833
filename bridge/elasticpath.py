"""Elastic Path API client for the Jobs endpoints: token, rate limit, retries, errors."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
import yarl
from pydantic import BaseModel, ValidationError

from bridge.httpclient import USER_AGENT, parse_retry_after, read_body

log = structlog.get_logger(__name__)

MAX_PAGE_LIMIT = 100
RETRY_AFTER_CAP = 300.0  # a Retry-After longer than this is treated as this
# A reply larger than this is refused, not read: a broken or hostile API cannot make the
# bridge hold a 1 GB body (100 jobs or 100 errors per page fit with room to spare).
MAX_REPLY_BYTES = 8 * 1024 * 1024
# An error reply is only read for its message: the rest is dropped.
MAX_ERROR_REPLY_BYTES = 64 * 1024
# Stands in for an error message too large to fetch even alone.
UNREADABLE_ERROR = "(error message larger than the reply size limit; not shown)"


class ApiError(Exception):
    """A request to Elastic Path that did not give a usable answer."""

    retryable = False

    def __init__(
        self,
        method: str,
        path: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.request_id = request_id
        where = f"{method} {path}"
        suffix = f" [request_id={request_id}]" if request_id else ""
        super().__init__(f"{where} failed: {message}{suffix}")


class NotFound(ApiError):
    """404: the job does not exist (any more: v2 jobs expire after a week)."""


class Forbidden(ApiError):
    """401 after a fresh token, or 403: these credentials may not do this."""


class TransientError(ApiError):
    """429, 5xx, timeout or connection failure that outlasted the retries."""

    retryable = True
    retry_after: float | None = None  # what the API asked for, when it said


class MalformedResponse(ApiError):
    """The body is not the JSON shape the API documents."""


class ReplyTooLarge(MalformedResponse):
    """The body is larger than the client reads (`MAX_REPLY_BYTES`)."""


class _Oversized(Exception):
    """Raised by `_read_capped`; turned into ReplyTooLarge by the caller, which knows the path."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job list: raw records (parsed by the caller, one by one) and the total."""

    records: list[Any]
    total: int | None


class _TokenReply(BaseModel):
    access_token: str
    expires_in: float | None = None
    expires: float | None = None


class RateLimiter:
    """Spaces requests at most `rate` per second (a burst of one), shared by all callers."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class TokenManager:
    """client_credentials tokens, refreshed ahead of expiry; concurrent callers share a refresh."""

    def __init__(
        self, session: aiohttp.ClientSession, api_base: str, client_id: str, client_secret: str
    ) -> None:
        self._session = session
        self._url = f"{api_base}/oauth/access_token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def get(self) -> str:
        if self._token is not None and time.monotonic() < self._refresh_at:
            return self._token
        async with self._lock:
            # Another caller may have refreshed while this one waited for the lock.
            if self._token is None or time.monotonic() >= self._refresh_at:
                await self._refresh()
            assert self._token is not None
            return self._token

    async def invalidate(self, token: str) -> None:
        """Forget `token` after a 401, unless a newer one already replaced it."""
        async with self._lock:
            if self._token == token:
                self._token = None

    async def _refresh(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        path = "/oauth/access_token"
        try:
            # No redirects: a 3xx would carry client_secret to wherever Location points.
            async with self._session.post(self._url, data=form, allow_redirects=False) as response:
                if 300 <= response.status < 400:
                    message = _redirect_message(response)
                    raise ApiError("POST", path, message, status=response.status)
                if response.status != 200:
                    text = await _read_error(response)
                    error = _error_from_body(response.status, text)
                    kind = TransientError if _retryable_status(response.status) else Forbidden
                    raise kind(
                        "POST",
                        path,
                        error.message,
                        status=response.status,
                        request_id=error.request_id,
                    )
                text = await _read_capped(response, MAX_REPLY_BYTES)
        except _Oversized as exc:
            raise ReplyTooLarge("POST", path, str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError("POST", path, _describe(exc)) from None
        try:
            body = json.loads(text)
            if isinstance(body, dict) and isinstance(body.get("data"), dict):
                body = body["data"]  # the OpenAPI spec's wrapped variant
            reply = _TokenReply.model_validate(body)
        except (ValueError, ValidationError):
            raise MalformedResponse(
                "POST", path, "token reply is not the documented JSON"
            ) from None
        now = time.monotonic()
        if reply.expires_in is not None:
            lifetime = reply.expires_in
        elif reply.expires is not None:
            lifetime = reply.expires - time.time()
        else:
            lifetime = 3600.0
        # Refresh a minute early, or a tenth early for very short-lived tokens.
        self._refresh_at = now + max(0.0, lifetime - min(60.0, lifetime / 10))
        self._token = reply.access_token
        self.refreshes += 1
        log.info("token_refreshed", expires_in=round(lifetime))


@dataclass(frozen=True, slots=True)
class _ErrorInfo:
    message: str
    request_id: str | None


def _error_from_body(status: int, text: str) -> _ErrorInfo:
    """JSON:API errors (`status` as string or int), a bare error object, or anything else."""
    try:
        body = json.loads(text)
    except ValueError:
        return _ErrorInfo(f"HTTP {status} with a non-JSON body", None)
    error: Any = body
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        error = body["errors"][0]
    if not isinstance(error, dict):
        return _ErrorInfo(f"HTTP {status}", None)
    title = error.get("title") if isinstance(error.get("title"), str) else "error"
    detail = error.get("detail")
    message = f"{status} {title}" + (f": {detail}" if isinstance(detail, str) and detail else "")
    request_id = error.get("request_id")
    return _ErrorInfo(message, request_id if isinstance(request_id, str) else None)


def _retryable_status(status: int) -> bool:
    return status == 429 or status == 408 or status >= 500


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redirect_message(response: aiohttp.ClientResponse) -> str:
    """A 3xx, named by the origin it points to (not its path or query: they may hold tokens)."""
    location = response.headers.get("location", "")
    try:
        target = response.url.join(yarl.URL(location)) if location else None
    except ValueError:
        target = None
    where = f" to {target.scheme}://{target.host}:{target.port}" if target and target.host else ""
    return (
        f"HTTP {response.status} redirect{where}; redirects are not followed "
        "(check api_base: it must be the store's API host itself)"
    )


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> str:
    """The body as text, or _Oversized as soon as it proves longer than `limit` bytes."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _Oversized(f"reply of {declared} bytes is larger than the {limit}-byte limit")
    buffer = bytearray()
    while chunk := await response.content.read(limit + 1 - len(buffer)):
        buffer += chunk
        if len(buffer) > limit:
            raise _Oversized(f"reply is larger than the {limit}-byte limit")
    return buffer.decode("utf-8", errors="replace")


async def _read_error(response: aiohttp.ClientResponse) -> str:
    """The start of an error reply: enough for its JSON:API message, never more."""
    raw = await read_body(response, MAX_ERROR_REPLY_BYTES)
    return raw.decode("utf-8", errors="replace")


class ElasticPathClient:
    """The Jobs API of one store. One ClientSession, one token, one rate budget."""

    def __init__(
        self,
        api_base: str,
        client_id: str,
        client_secret: str,
        *,
        max_requests_per_second: float = 5.0,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        store: str = "",
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"user-agent": USER_AGENT, "accept": "application/json"},
        )
        self.tokens = TokenManager(self._session, self.api_base, client_id, client_secret)
        self.limiter = RateLimiter(max_requests_per_second)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_reply_bytes = max_reply_bytes
        self.requests = 0  # every HTTP request made to the Jobs endpoints, retries included
        self.stats: Counter[str] = Counter()  # replies_too_large
        self._log = log.bind(store=store) if store else log

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> ElasticPathClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- Jobs endpoints ------------------------------------------------------------------

    async def list_pcm_jobs(self, offset: int = 0, limit: int = MAX_PAGE_LIMIT) -> Page:
        body = await self._get_json(
            "/pcm/jobs", {"page[limit]": str(limit), "page[offset]": str(offset)}
        )
        return Page(_list_data(body, "GET", "/pcm/jobs"), _total(body))

    async def get_pcm_job(self, job_id: str) -> Any:
        path = f"/pcm/jobs/{job_id}"
        return _object_data(await self._get_json(path), "GET", path)

    async def get_pcm_job_errors(self, job_id: str, max_errors: int = 100) -> list[dict[str, Any]]:
        """The job's error messages, every page up to `max_errors`, as `[{"message": ...}]`.

        A page too large to read is asked for again in halves: a few huge messages must not
        hide all the others. A single message too large even alone is replaced by a notice.
        """
        path = f"/pcm/jobs/{job_id}/errors"
        errors: list[dict[str, Any]] = []
        offset = 0
        page_limit = MAX_PAGE_LIMIT
        while len(errors) < max_errors:
            limit = min(page_limit, max_errors - len(errors))
            try:
                body = await self._get_json(
                    path, {"page[limit]": str(limit), "page[offset]": str(offset)}
                )
            except ReplyTooLarge:
                if limit > 1:
                    page_limit = max(1, limit // 2)
                    continue
                errors.append({"message": UNREADABLE_ERROR})
                offset += 1
                continue
            records = _list_data(body, "GET", path)
            errors.extend(_error_messages(records))
            total = _total(body)
            offset += len(records)
            # Stop on a short page, or when the documented total is reached.
            if len(records) < limit or (total is not None and offset >= total):
                break
        return errors[:max_errors]

    async def list_v2_jobs(self) -> list[Any]:
        return _list_data(await self._get_json("/v2/jobs"), "GET", "/v2/jobs")

    async def get_v2_job(self, job_id: str) -> Any:
        path = f"/v2/jobs/{job_id}"
        return _object_data(await self._get_json(path), "GET", path)

    async def get_v2_job_file(self, job_id: str) -> str | None:
        path = f"/v2/jobs/{job_id}/file"
        data = _object_data(await self._get_json(path), "GET", path)
        href = data.get("href")
        return href if isinstance(href, str) and href else None

    # -- transport -----------------------------------------------------------------------

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET with the token, the rate budget, and retries of whatever may pass."""
        attempt = 0
        refreshed_after_401 = False
        while True:
            try:
                return await self._get_once(path, params)
            except _TokenRejected as rejected:
                if refreshed_after_401:
                    raise Forbidden("GET", path, rejected.message, status=401) from None
                refreshed_after_401 = True
                await self.tokens.invalidate(rejected.token)
                self._log.info("token_rejected", path=path)
            except TransientError as error:
                if attempt >= self.max_retries:
                    raise
                delay = error.retry_after
                if delay is None:
                    # Exponential backoff with full jitter: many clients' retries spread out.
                    delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
                attempt += 1
                self._log.warning(
                    "api_request_retried",
                    path=path,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(error),
                )
                await asyncio.sleep(delay)

    async def _get_once(self, path: str, params: dict[str, str] | None) -> Any:
        await self.limiter.acquire()
        token = await self.tokens.get()  # a TransientError here is retried like any other
        self.requests += 1
        try:
            async with self._session.get(
                self.api_base + path,
                params=params,
                headers={"authorization": f"Bearer {token}"},
                # A redirect would carry the bearer token to wherever Location points.
                allow_redirects=False,
            ) as response:
                status = response.status
                if 300 <= status < 400:
                    raise ApiError("GET", path, _redirect_message(response), status=status)
                if status == 200:
                    text = await _read_capped(response, self.max_reply_bytes)
                else:
                    text = await _read_error(response)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is not None:
                    retry_after = min(retry_after, RETRY_AFTER_CAP)
                header_request_id = response.headers.get("x-request-id")
        except _Oversized as exc:
            self.stats["replies_too_large"] += 1
            self._log.warning("api_reply_too_large", path=path, error=str(exc))
            raise ReplyTooLarge("GET", path, str(exc), status=200) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError("GET", path, _describe(exc)) from None
        if status == 200:
            try:
                return json.loads(text)
            except ValueError:
                raise MalformedResponse(
                    "GET", path, "body is not valid JSON", status=status,
                    request_id=header_request_id,
                ) from None  # fmt: skip
        info = _error_from_body(status, text)
        request_id = info.request_id or header_request_id
        if status == 401:
            raise _TokenRejected(token, info.message)
        if status == 404:
            raise NotFound("GET", path, info.message, status=status, request_id=request_id)
        if not _retryable_status(status):
            kind = Forbidden if status == 403 else ApiError
            raise kind("GET", path, info.message, status=status, request_id=request_id)
        error = TransientError("GET", path, info.message, status=status, request_id=request_id)
        error.retry_after = retry_after
        raise error


class _TokenRejected(Exception):
    """A 401 on a request: the token expired early or was revoked."""

    def __init__(self, token: str, message: str) -> None:
        self.token = token
        self.message = message


def _list_data(body: Any, method: str, path: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise MalformedResponse(method, path, "expected an object with a `data` list")
    return body["data"]


def _object_data(body: Any, method: str, path: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise MalformedResponse(method, path, "expected an object with a `data` object")
    return body["data"]


def _error_messages(records: list[Any]) -> list[dict[str, Any]]:
    messages = []
    for record in records:
        attributes = record.get("attributes") if isinstance(record, dict) else None
        message = attributes.get("message") if isinstance(attributes, dict) else None
        if isinstance(message, str):
            messages.append({"message": message})
    return messages


def _total(body: dict[str, Any]) -> int | None:
    meta = body.get("meta")
    results = meta.get("results") if isinstance(meta, dict) else None
    total = results.get("total") if isinstance(results, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else None
