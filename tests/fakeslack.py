"""A fake Slack for tests: incoming webhooks, chat.postMessage and chat.update, with real limits."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WEBHOOK_PATH = "/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"
WEBHOOK_CHANNEL = "C0HOOK"  # the channel an incoming webhook is bound to
TOKEN = "xoxb-000-000-fAkEsEcReTtOkEn"

# Slack's Block Kit limits, as its API enforces them.
HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELDS_MAX = 10
FIELD_MAX = 2000
BLOCKS_MAX = 50
CONTEXT_ELEMENTS_MAX = 10
ACTIONS_ELEMENTS_MAX = 25
BUTTON_TEXT_MAX = 75
BUTTON_URL_MAX = 3000
TEXT_MAX = 40_000
ATTACHMENTS_MAX = 100
BLOCK_TYPES = frozenset({"header", "section", "context", "actions", "divider", "image"})


@dataclass
class Message:
    """One message Slack accepted, as it stands now (updates applied)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    thread_ts: str | None
    via: str  # "webhook" or "api"
    posted_at: float  # time.monotonic() at arrival
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier versions, oldest first
    updated_at: list[float] = field(default_factory=list)

    @property
    def updates(self) -> int:
        return len(self.history)

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": self.blocks, "attachments": self.attachments}

    def dump(self) -> str:
        """All of the message as one string, for `in` assertions."""
        return json.dumps(self.payload(), ensure_ascii=False)

    def all_blocks(self) -> list[dict[str, Any]]:
        nested = [b for a in self.attachments for b in a.get("blocks", [])]
        return [*self.blocks, *nested]

    def header(self) -> str | None:
        for block in self.all_blocks():
            if block.get("type") == "header":
                return str(block["text"]["text"])
        return None

    def colour(self) -> str | None:
        return self.attachments[0].get("color") if self.attachments else None


@dataclass
class Fault:
    """A canned answer, given to the next request before any check."""

    status: int
    body: str | dict[str, Any] = ""
    headers: dict[str, str] = field(default_factory=dict)


def block_kit_problem(payload: dict[str, Any]) -> str | None:
    """Why Slack would refuse this message (its error code and a note), or None."""
    text = payload.get("text")
    blocks = payload.get("blocks") or []
    attachments = payload.get("attachments") or []
    if not isinstance(text, str) or not text.strip():
        return "no_text"
    if len(text) > TEXT_MAX:
        return "msg_too_long"
    if not isinstance(blocks, list) or not isinstance(attachments, list):
        return "invalid_blocks_format"
    if len(attachments) > ATTACHMENTS_MAX:
        return "too_many_attachments"
    for attachment in attachments:
        problem = _blocks_problem(attachment.get("blocks") or [])
        if problem:
            return f"invalid_attachments: {problem}"
    problem = _blocks_problem(blocks)
    return f"invalid_blocks: {problem}" if problem else None


def _blocks_problem(blocks: list[dict[str, Any]]) -> str | None:
    if len(blocks) > BLOCKS_MAX:
        return f"{len(blocks)} blocks (max {BLOCKS_MAX})"
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            return f"blocks[{i}]: unknown type {kind!r}"
        problem = _block_problem(block)
        if problem:
            return f"blocks[{i}] ({kind}): {problem}"
    return None


def _block_problem(block: dict[str, Any]) -> str | None:
    kind = block["type"]
    if kind == "header":
        text = block.get("text") or {}
        if text.get("type") != "plain_text" or not text.get("text"):
            return "header text must be non-empty plain_text"
        if len(text["text"]) > HEADER_MAX:
            return f"header text longer than {HEADER_MAX}"
    elif kind == "section":
        text = block.get("text")
        fields = block.get("fields")
        if text is None and not fields:
            return "a section needs text or fields"
        if text is not None and not 1 <= len(text.get("text") or "") <= SECTION_TEXT_MAX:
            return f"section text must be 1..{SECTION_TEXT_MAX} characters"
        if fields is not None:
            if not 1 <= len(fields) <= FIELDS_MAX:
                return f"{len(fields)} fields (1..{FIELDS_MAX})"
            for field_ in fields:
                if not 1 <= len(field_.get("text") or "") <= FIELD_MAX:
                    return f"field text must be 1..{FIELD_MAX} characters"
    elif kind == "context":
        elements = block.get("elements") or []
        if not 1 <= len(elements) <= CONTEXT_ELEMENTS_MAX:
            return f"{len(elements)} context elements (1..{CONTEXT_ELEMENTS_MAX})"
    elif kind == "actions":
        elements = block.get("elements") or []
        if not 1 <= len(elements) <= ACTIONS_ELEMENTS_MAX:
            return f"{len(elements)} actions elements (1..{ACTIONS_ELEMENTS_MAX})"
        for element in elements:
            if len((element.get("text") or {}).get("text") or "") > BUTTON_TEXT_MAX:
                return "button text too long"
            if len(element.get("url") or "") > BUTTON_URL_MAX:
                return "button url too long"
    return None


class FakeSlack:
    """Serves the webhook path and the Web API under /api/; records what it accepted.

    Fault switches: `faults` (canned answers, in order), `webhook_error` ((status, text) for
    every webhook post), `archived` (channel ids), `delay` (stall before answering),
    `rate_interval` (Slack's 1 msg/s per channel for new messages; chat.update is not subject
    to it, as in Slack).
    """

    def __init__(
        self,
        *,
        token: str = TOKEN,
        channels: dict[str, str] | None = None,
        rate_interval: float = 1.0,
    ) -> None:
        self.token = token
        self.channels = channels if channels is not None else {"#ops": "C0OPS"}
        self.rate_interval = rate_interval
        self.messages: list[Message] = []
        self.rejected: list[tuple[str, int, str]] = []  # (endpoint, status, error)
        self.faults: list[Fault] = []
        self.webhook_error: tuple[int, str] | None = None
        self.archived: set[str] = set()
        self.delay = 0.0  # seconds to stall before answering anything (timeouts)
        self._last_post: dict[str, float] = {}
        self._ts = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_post(WEBHOOK_PATH, self._webhook)
        self.app.router.add_post("/api/chat.postMessage", self._post_message)
        self.app.router.add_post("/api/chat.update", self._update)

    # What tests look at.

    def top_level(self, channel: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages
            if m.thread_ts is None and (channel is None or m.channel == channel)
        ]

    def replies(self, ts: str) -> list[Message]:
        return [m for m in self.messages if m.thread_ts == ts]

    def find(self, ts: str) -> Message | None:
        return next((m for m in self.messages if m.ts == ts), None)

    def delete(self, ts: str) -> None:
        self.messages = [m for m in self.messages if m.ts != ts]

    # Endpoints.

    async def _webhook(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        fault = self._next_fault()
        if fault is not None:
            return self._answer_fault("webhook", fault)
        if self.webhook_error is not None:
            status, text = self.webhook_error
            return self._reject_text("webhook", status, text)
        try:
            payload = await request.json()
        except ValueError:
            return self._reject_text("webhook", 400, "invalid_payload")
        if not isinstance(payload, dict):
            return self._reject_text("webhook", 400, "invalid_payload")
        problem = block_kit_problem(payload)
        if problem is not None:
            code = problem.split(":")[0]
            return self._reject_text(
                "webhook", 400, code if code == "no_text" else "invalid_blocks"
            )
        if self._too_soon(WEBHOOK_CHANNEL):
            return self._reject_text("webhook", 429, "rate_limited", {"Retry-After": "1"})
        self._record(WEBHOOK_CHANNEL, payload, None, "webhook")
        return web.Response(text="ok")

    async def _post_message(self, request: web.Request) -> web.Response:
        payload, refusal = await self._api_request("chat.postMessage", request)
        if refusal is not None:
            return refusal
        channel = self._channel_id(str(payload.get("channel") or ""))
        if channel is None:
            return self._api_error("chat.postMessage", "channel_not_found")
        if channel in self.archived:
            return self._api_error("chat.postMessage", "is_archived")
        thread_ts = payload.get("thread_ts")
        if thread_ts is not None and self.find(str(thread_ts)) is None:
            return self._api_error("chat.postMessage", "thread_not_found")
        problem = block_kit_problem(payload)
        if problem is not None:
            code, _, note = problem.partition(": ")
            return self._api_error("chat.postMessage", code, note)
        if self._too_soon(channel):
            return self._api_error("chat.postMessage", "ratelimited", status=429, retry_after=1)
        message = self._record(channel, payload, thread_ts, "api")
        return web.json_response(
            {"ok": True, "channel": channel, "ts": message.ts, "message": payload}
        )

    async def _update(self, request: web.Request) -> web.Response:
        payload, refusal = await self._api_request("chat.update", request)
        if refusal is not None:
            return refusal
        channel = str(payload.get("channel") or "")
        if channel not in self.channels.values():  # chat.update wants the id, not the name
            return self._api_error("chat.update", "channel_not_found")
        if channel in self.archived:
            return self._api_error("chat.update", "is_archived")
        message = self.find(str(payload.get("ts") or ""))
        if message is None or message.channel != channel:
            return self._api_error("chat.update", "message_not_found")
        problem = block_kit_problem(payload)
        if problem is not None:
            code, _, note = problem.partition(": ")
            return self._api_error("chat.update", code, note)
        message.history.append(message.payload())
        message.updated_at.append(time.monotonic())
        message.text = payload["text"]
        message.blocks = payload.get("blocks") or []
        message.attachments = payload.get("attachments") or []
        return web.json_response({"ok": True, "channel": channel, "ts": message.ts})

    # Helpers.

    async def _api_request(
        self, method: str, request: web.Request
    ) -> tuple[dict[str, Any], web.Response | None]:
        await asyncio.sleep(self.delay)
        fault = self._next_fault()
        if fault is not None:
            return {}, self._answer_fault(method, fault)
        auth = request.headers.get("Authorization", "")
        if not auth:
            return {}, self._api_error(method, "not_authed")
        if auth != f"Bearer {self.token}":
            return {}, self._api_error(method, "invalid_auth")
        if not request.content_type.startswith("application/json"):
            return {}, self._api_error(method, "invalid_arguments")
        try:
            payload = await request.json()
        except ValueError:
            return {}, self._api_error(method, "invalid_json")
        if not isinstance(payload, dict):
            return {}, self._api_error(method, "json_not_object")
        return payload, None

    def _channel_id(self, name_or_id: str) -> str | None:
        if name_or_id in self.channels.values():
            return name_or_id
        return self.channels.get(name_or_id)

    def _too_soon(self, channel: str) -> bool:
        now = time.monotonic()
        last = self._last_post.get(channel)
        return last is not None and now - last < self.rate_interval

    def _record(
        self, channel: str, payload: dict[str, Any], thread_ts: str | None, via: str
    ) -> Message:
        now = time.monotonic()
        self._last_post[channel] = now
        message = Message(
            channel=channel,
            ts=f"{int(time.time())}.{next(self._ts):06d}",
            text=payload["text"],
            blocks=payload.get("blocks") or [],
            attachments=payload.get("attachments") or [],
            thread_ts=str(thread_ts) if thread_ts is not None else None,
            via=via,
            posted_at=now,
        )
        self.messages.append(message)
        return message

    def _next_fault(self) -> Fault | None:
        return self.faults.pop(0) if self.faults else None

    def _answer_fault(self, endpoint: str, fault: Fault) -> web.Response:
        self.rejected.append((endpoint, fault.status, "fault"))
        if isinstance(fault.body, dict):
            return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        return web.Response(status=fault.status, text=fault.body, headers=fault.headers)

    def _reject_text(
        self, endpoint: str, status: int, text: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.rejected.append((endpoint, status, text))
        return web.Response(status=status, text=text, headers=headers)

    def _api_error(
        self,
        method: str,
        error: str,
        note: str = "",
        *,
        status: int = 200,
        retry_after: float | None = None,
    ) -> web.Response:
        self.rejected.append((method, status, error))
        body: dict[str, Any] = {"ok": False, "error": error}
        if note:
            body["response_metadata"] = {"messages": [f"[ERROR] {note}"]}
        headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after else None
        return web.json_response(body, status=status, headers=headers)
