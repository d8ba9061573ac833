"""Slack Block Kit messages for job events (message, error thread, digest) within its limits."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.config.types import format_duration
from bridge.jobs import JobStatus, parse_timestamp

# Slack's Block Kit limits (api.slack.com/reference/block-kit/blocks): a message that breaks
# one is refused whole (invalid_blocks), so every piece of text is cut to fit before sending.
HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELDS_MAX = 10
FIELD_MAX = 2000
BLOCKS_MAX = 50
BUTTON_URL_MAX = 3000
# Slack accepts 40,000 characters of top-level text, but it is the notification preview:
# beyond a few lines nobody reads it.
TEXT_MAX = 1000

# Keyed by the status words (a JobStatus is one): a view may carry any status it was given.
COLOURS: dict[str, str] = {
    JobStatus.FAILED: "#d40e0d",  # danger
    JobStatus.SUCCESS: "#2eb886",  # good
    JobStatus.STALLED: "#daa038",  # warning
    JobStatus.CANCELLED: "#daa038",
}
NEUTRAL_COLOUR = "#dddddd"  # Slack's own default bar: pending / started say nothing is wrong
EMOJI: dict[str, str] = {
    JobStatus.PENDING: ":hourglass_flowing_sand:",
    JobStatus.STARTED: ":arrows_counterclockwise:",
    JobStatus.SUCCESS: ":white_check_mark:",
    JobStatus.FAILED: ":x:",
    JobStatus.CANCELLED: ":no_entry_sign:",
    JobStatus.STALLED: ":warning:",
}

MAIN_ERRORS_BOT = 5  # the rest are in the thread reply
MAIN_ERRORS_WEBHOOK = 10  # no thread to continue in
THREAD_ERRORS = 100
THREAD_SECTIONS = 10
ERROR_CHARS = 300  # one error message; longer ones are rarely more helpful, only longer
VALUE_CHARS = 300  # one field value (ids, names, timestamps)
DIGEST_LINES = 15
# A job link is what people click; Slack's preview card of it would only add noise.
NO_UNFURL = {"unfurl_links": False, "unfurl_media": False}


@dataclass(frozen=True, slots=True)
class JobView:
    """The parts of a job event a message shows, read defensively: rendering never raises."""

    event_id: str
    time: str | None
    sequence: int
    store: str
    source: str
    status: str
    previous_status: str | None
    job_id: str
    job_type: str
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    errors: tuple[str, ...]
    file_locations: tuple[str, ...]

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> JobView:
        data = as_mapping(event.get("data"))
        job = as_mapping(data.get("job"))
        errors = data.get("errors")
        files = data.get("file_locations")
        return cls(
            event_id=str(event.get("id") or ""),
            time=_optional_str(event.get("time")),
            sequence=as_int(event.get("sequence")),
            store=str(data.get("store") or "?"),
            source=str(data.get("source") or "?"),
            status=str(data.get("status") or job.get("status") or "unknown"),
            previous_status=_optional_str(data.get("previous_status")),
            job_id=str(job.get("id") or event.get("subject") or "?"),
            job_type=str(job.get("type") or "job"),
            created_at=_optional_str(job.get("created_at")),
            started_at=_optional_str(job.get("started_at")),
            completed_at=_optional_str(job.get("completed_at")),
            errors=tuple(_error_text(e) for e in errors) if isinstance(errors, list) else (),
            file_locations=tuple(str(f) for f in files) if isinstance(files, list) else (),
        )


def render_job_message(
    view: JobView,
    *,
    link: str | None = None,
    max_errors: int = MAIN_ERRORS_WEBHOOK,
    errors_in_thread: bool = False,
) -> dict[str, Any]:
    """Header, facts, first errors, link and context; the colour bar says how it went."""
    title = f"{EMOJI.get(view.status, ':grey_question:')} {view.job_type} {view.status}"
    status = view.status
    if view.previous_status and view.previous_status != view.status:
        status = f"{view.previous_status} → {view.status}"
    facts = [
        ("Store", _plain(view.store)),
        ("Job ID", f"`{_plain(view.job_id)}`"),
        ("Type", _plain(view.job_type)),
        ("Source", _plain(view.source)),
        ("Status", _plain(status)),
        ("Created", _when(view.created_at)),
        ("Started", _when(view.started_at)),
        ("Completed", _when(view.completed_at)),
        _duration_fact(view),
    ]
    fields = [_field(label, value) for label, value in facts if value]
    blocks: list[dict[str, Any]] = [
        _header(title),
        {"type": "section", "fields": fields[:FIELDS_MAX]},
    ]
    if view.errors:
        count = len(view.errors)
        heading = f"*{count} error{'s' if count != 1 else ''}*"
        more = " (all in the thread)" if errors_in_thread else ""
        lines = [f"• {_mrkdwn(e, ERROR_CHARS)}" for e in view.errors[:max_errors]]
        blocks += [_section(t) for t in _pack(heading, lines, count, max_sections=1, more=more)]
    if view.file_locations:
        files = [f"• {_mrkdwn(f, ERROR_CHARS)}" for f in view.file_locations[:5]]
        blocks += [_section(t) for t in _pack("*Files*", files, len(view.file_locations))]
    if link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open job"},
                        "url": link,
                    }
                ],
            }
        )
    blocks.append(_context(view))
    text = f"{title}: job {cut(view.job_id, VALUE_CHARS)} in {view.store} ({view.source})"
    if view.errors:
        text += f" - {cut(view.errors[0], ERROR_CHARS)}"
    return {
        "text": _mrkdwn(text, TEXT_MAX),
        "attachments": [
            {"color": COLOURS.get(view.status, NEUTRAL_COLOUR), "blocks": blocks[:BLOCKS_MAX]}
        ],
    }


def render_error_thread(view: JobView) -> dict[str, Any]:
    """The thread reply under a failed job's message: its errors, numbered."""
    count = len(view.errors)
    heading = (
        f"*{count} error{'s' if count != 1 else ''}* of {_mrkdwn(view.job_type, 100)}"
        f" `{_mrkdwn(view.job_id, 100)}`"
    )
    lines = [
        f"{n}. {_mrkdwn(e, ERROR_CHARS)}" for n, e in enumerate(view.errors[:THREAD_ERRORS], 1)
    ]
    sections = _pack(heading, lines, count, max_sections=THREAD_SECTIONS)
    text = f"{count} errors of {view.job_type} {view.job_id}"
    return {"text": _mrkdwn(text, TEXT_MAX), "blocks": [_section(t) for t in sections]}


def render_digest(
    entries: Sequence[Mapping[str, Any]],
    *,
    window: float,
    threshold: int,
    now: float,
    link_for: Callable[[Mapping[str, Any]], str | None] = lambda _: None,
) -> dict[str, Any]:
    """One message for many failures: counts by job type, then the first few, then '… and N'."""
    entries = sorted(entries, key=lambda e: float(e.get("t") or 0))
    count = len(entries)
    kinds = {str(e.get("status")) for e in entries}
    verb = (
        kinds.pop() if kinds in ({JobStatus.FAILED}, {JobStatus.STALLED}) else "failed or stalled"
    )
    first = float(entries[0].get("t") or now) if entries else now
    # On time it covers the window; flushed late (after a restart) it covers more.
    span = window if now - first <= window + 10 else now - first
    last = format_duration(span, human=True)
    title = f":rotating_light: {count} job{'s' if count != 1 else ''} {verb} in the last {last}"
    by_type = Counter(str(e.get("job_type")) for e in entries).most_common()
    shown = by_type if len(by_type) <= FIELDS_MAX else by_type[: FIELDS_MAX - 1]
    fields = [_field(t, str(n)) for t, n in shown]
    if len(shown) < len(by_type):
        fields.append(_field("Other types", str(sum(n for _, n in by_type[len(shown) :]))))
    lines = [_digest_line(e, link_for(e)) for e in entries[:DIGEST_LINES]]
    blocks: list[dict[str, Any]] = [_header(title), {"type": "section", "fields": fields}]
    blocks += [_section(t) for t in _pack("", lines, count, max_sections=1)]
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"jobs-bridge · grouped because more than {threshold} jobs failed "
                    f"or stalled within {format_duration(window, human=True)}",
                }
            ],
        }
    )
    summary = ", ".join(f"{t}: {n}" for t, n in by_type[:5])
    text = f"{title.removeprefix(':rotating_light: ')}: {summary}"
    return {
        "text": _mrkdwn(text, TEXT_MAX),
        "attachments": [{"color": COLOURS[JobStatus.FAILED], "blocks": blocks}],
        **NO_UNFURL,
    }


def _digest_line(entry: Mapping[str, Any], link: str | None) -> str:
    job_id = _mrkdwn(str(entry.get("job_id")), 100)
    shown_id = f"<{link}|{job_id}>" if link else f"`{job_id}`"
    line = f"• {_mrkdwn(str(entry.get('job_type')), 100)} {shown_id}"
    line += f" ({_mrkdwn(str(entry.get('store')), 100)}/{_escape(str(entry.get('source'))[:10])})"
    if entry.get("status") != JobStatus.FAILED:
        line += f" {_escape(str(entry.get('status'))[:20])}"
    if entry.get("error"):
        line += f": {_mrkdwn(str(entry['error']), ERROR_CHARS)}"
    return line


def _header(text: str) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": cut(text, HEADER_MAX), "emoji": True},
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_TEXT_MAX)}}


def _field(label: str, value: str) -> dict[str, str]:
    # `value` arrives as finished mrkdwn, already escaped and cut (_plain, _when): cutting
    # it again here could split a link or an entity. The cut below is only a last guard.
    text = f"*{_mrkdwn(label, 100)}*\n{value}"
    return {"type": "mrkdwn", "text": cut(text, FIELD_MAX)}


def _context(view: JobView) -> dict[str, Any]:
    parts = ["jobs-bridge", f"event `{_mrkdwn(view.event_id, 100)}`"]
    if view.time:
        parts.append(f"observed {_when(view.time)}")
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(parts)}]}


def _pack(
    heading: str, lines: Sequence[str], total: int, *, max_sections: int = 1, more: str = ""
) -> list[str]:
    """Lines into at most `max_sections` section texts, ending with '… and N more' if cut."""
    budget = SECTION_TEXT_MAX - 100  # leaves room for the closing '… and N more' line
    sections: list[str] = []
    current = heading
    shown = 0
    for line in lines:
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > budget:
            if len(sections) + 1 >= max_sections:
                break
            sections.append(current)
            candidate = line
        current = candidate
        shown += 1
    if total > shown:
        current = (
            f"{current}\n… and {total - shown} more{more}"
            if current
            else f"… and {total - shown} more"
        )
    sections.append(current)
    return [s for s in sections if s]


def _duration_fact(view: JobView) -> tuple[str, str]:
    started = _parse(view.started_at)
    ended = _parse(view.completed_at)
    if started and ended:
        return "Duration", format_duration((ended - started).total_seconds(), human=True)
    if view.status == JobStatus.STALLED:
        since = started or _parse(view.created_at)
        observed = _parse(view.time)
        if since and observed:
            label = "Running for" if started else "Waiting for"
            return label, format_duration((observed - since).total_seconds(), human=True)
    return "Duration", ""


def _when(value: str | None) -> str:
    """A Slack date token: each reader sees it in their own time zone."""
    moment = _parse(value)
    if moment is None:
        return _mrkdwn(value, 100) if value else ""
    fallback = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time_secs}}|{fallback}>"


def _parse(value: str | None) -> datetime | None:
    try:
        moment = parse_timestamp(value)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment else None


def _plain(text: str) -> str:
    return _mrkdwn(text, VALUE_CHARS)


def _escape(text: str) -> str:
    # The three characters Slack's mrkdwn reserves for links and mentions.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int) -> str:
    """`text` escaped for mrkdwn, then cut to `limit` characters but never inside an entity."""
    escaped = _escape(text)
    if len(escaped) <= limit:
        return escaped
    head = escaped[: limit - 1]
    amp = head.rfind("&", len(head) - 4)
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head + "…"


def cut(text: str, limit: int) -> str:
    """`text` as is, or its first `limit` - 1 characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        for key in ("message", "detail", "title", "error"):
            if isinstance(error.get(key), str) and error[key]:
                text = error[key]
                break
        else:
            text = json.dumps(error, ensure_ascii=False, default=str)
    else:
        text = str(error)
    return " ".join(text.split()) or "(no message)"


def as_mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a dict, else an empty one: for reading JSON nobody vetted."""
    return value if isinstance(value, dict) else {}


def _optional_str(value: Any) -> str | None:
    return str(value) if value is not None and value != "" else None


def as_int(value: Any) -> int:
    """`value` as an int, or 0 when it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
