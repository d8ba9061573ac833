"""What the HTTP sinks (webhook, Slack) share: one pooled, guarded session, and a POST whose
every way of not reaching the receiver comes back as a failed DeliveryResult."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.logs import redact_text
from bridge.sinks.base import DeliveryResult, Sink

if TYPE_CHECKING:
    import aiohttp
    import yarl


@dataclass(frozen=True, slots=True)
class Answer:
    """A receiver's answer, its body read within limits."""

    status: int
    status_text: str  # `503 Service Unavailable`: the standard phrase, never the receiver's
    headers: Mapping[str, str]
    retry_after: float | None  # seconds, from Retry-After
    text: str  # the body read, decoded
    excerpt: str  # its first characters, secrets masked: for the attempt log


class HttpSink(Sink["aiohttp.ClientSession"]):
    """A sink that POSTs: redirects are never followed, private addresses refused unless
    allowed. A session passed in is shared: used, never closed."""

    def __init__(
        self,
        name: str,
        *,
        timeout: float,
        allow_private_networks: bool,
        session: aiohttp.ClientSession | None,
        **log_context: Any,
    ) -> None:
        super().__init__(name, timeout=timeout, **log_context)
        self._allow_private_networks = allow_private_networks
        self._shared_session = session

    async def client(self) -> aiohttp.ClientSession:
        # A session needs no set-up before each use and stays usable until closed: once it
        # exists, every delivery takes it without the connect lock.
        return self._client if self._client is not None else await super().client()

    async def connect(self) -> aiohttp.ClientSession:
        if self._shared_session is not None:
            return self._shared_session
        from bridge.httpclient import make_session

        return make_session(
            allow_private_networks=self._allow_private_networks, timeout=self.timeout
        )

    async def disconnect(self, client: aiohttp.ClientSession) -> None:
        if client is not self._shared_session:
            await client.close()

    async def post(
        self,
        url: str | yarl.URL,
        body: bytes,
        headers: Mapping[str, str],
        *,
        max_bytes: int | None = None,
    ) -> Answer | DeliveryResult:
        """The receiver's answer (up to `max_bytes` of its body, else only what the excerpt
        takes), or the failed result when there was none."""
        import aiohttp
        import yarl

        from bridge.httpclient import (
            EXCERPT_CHARS,
            AddressRefused,
            describe_connection_failure,
            parse_retry_after,
            read_body,
            read_excerpt,
            status_text,
        )

        session = await self.client()
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if max_bytes is None:
                    text = await read_excerpt(response)
                else:
                    text = (await read_body(response, max_bytes)).decode(errors="replace")
        except AddressRefused as exc:
            return DeliveryResult(ok=False, reason=exc.reason, retryable=False)
        except TimeoutError:  # aiohttp's timeouts all derive from it
            return DeliveryResult(ok=False, reason=f"timed out after {self.timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            reason = describe_connection_failure(exc, yarl.URL(url))
            return DeliveryResult(ok=False, reason=reason)
        return Answer(
            status=response.status,
            status_text=status_text(response.status),
            headers=response.headers,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            text=text,
            excerpt=redact_text(text[:EXCERPT_CHARS]) if text else "",
        )
