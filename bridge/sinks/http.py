"""What the HTTP sinks (webhook, Slack) share: one pooled, guarded session, and a POST whose
every way of not reaching the receiver comes back as a failed DeliveryResult."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge.sinks.base import DeliveryResult, Sink

if TYPE_CHECKING:
    import aiohttp
    import yarl

    from bridge.httpclient import Answer


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
        from bridge import httpclient  # loaded with the first HTTP sink, not with the config

        session = await self.client()
        answer = await httpclient.post(
            session, url, body, headers, session_timeout=self.timeout, max_bytes=max_bytes
        )
        if isinstance(answer, httpclient.Unreached):
            return DeliveryResult(ok=False, reason=answer.reason, retryable=answer.retryable)
        return answer
