"""structlog set-up: JSON when stdout is not a terminal, readable when it is; secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
# Keys whose values are secret whatever they hold.
_SECRET_KEYS = re.compile(
    r"(secret|token|password|passwd|authorization|api_key|apikey|webhook_url|signature)", re.I
)
# Credentials inside URLs (amqp://user:pass@host) and bearer tokens inside free text.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)

_known_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values so that they are masked wherever they show up in a log line."""
    for value in values:
        if value and len(value) >= 4:
            _known_secrets.add(value)


def redact_text(text: str) -> str:
    """Mask every known secret, URL credential and bearer token in a string."""
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEYS.search(key))


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    return {
        key: REDACTED if _secret_key(key) and value else _redact(value)
        for key, value in event_dict.items()
    }


def _redact_rendered(_logger: Any, _name: str, rendered: Any) -> str:
    # Tracebacks are rendered after the dict processors ran: scrub the final text as well.
    return redact_text(str(rendered))


class _StdlibHandler(logging.StreamHandler):
    """The root handler `setup` installs (told apart from other handlers, e.g. pytest's)."""


def setup(level: str = "info", json_output: bool | None = None) -> None:
    """Configure structlog once for the process, and route stdlib logging through it.

    aiohttp's tracebacks and asyncio's "Task exception was never retrieved" come through the
    stdlib `logging` module: the root handler renders them with the same processors, so they
    are JSON in production and their secrets masked like every other line.
    """
    if json_output is None:
        json_output = not sys.stdout.isatty()
    renderer: Any
    if json_output:
        renderer = structlog.processors.JSONRenderer()
        # No local variables in tracebacks: they are noise, and may hold secrets.
        exception_processor: Any = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        exception_processor = structlog.processors.format_exc_info
    level_number = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    stream = sys.stdout if json_output else sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, exception_processor, redact_processor, renderer, _redact_rendered],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exception_processor,
            redact_processor,
            renderer,
            _redact_rendered,
        ],
    )
    handler = _StdlibHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)  # setup may run more than once (tests, the CLI)
    root.addHandler(handler)
    # Libraries' own INFO lines (broker clients' connection chatter) are not the bridge's story.
    root.setLevel(max(level_number, logging.WARNING))
