"""The admin API described as an OpenAPI 3.1 document, served at /openapi.json.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1), so a test validates real responses against
them. A new endpoint adds one entry to PATHS (and its schemas to SCHEMAS).
"""

from __future__ import annotations

import copy
from typing import Any

from bridge import __version__

Schema = dict[str, Any]

NULLABLE_STRING: Schema = {"type": ["string", "null"]}
NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
TIMESTAMP: Schema = {"type": ["string", "null"], "description": "ISO-8601 UTC"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# A subscription's health, as /status and /subscriptions both give it.
HEALTH_PROPERTIES: dict[str, Schema] = {
    "enabled": {"type": "boolean"},
    "disabled_reason": NULLABLE_STRING,
    "last_success_at": TIMESTAMP,
    "last_failure_at": TIMESTAMP,
    "last_error": NULLABLE_STRING,
    "failing_since": TIMESTAMP,
    "retrying": {"type": "integer"},
    "parked": {
        "type": "integer",
        "description": "events waiting behind an earlier one of their job (ordering: job)",
    },
    "dead_letters": {"type": "integer"},
}


def obj(required: list[str], properties: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties, **extra}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _duration() -> Schema:
    return obj(
        ["count", "sum", "avg", "p50", "p90", "buckets"],
        {
            "count": {"type": "integer"},
            "sum": {"type": "number"},
            "avg": NULLABLE_NUMBER,
            "p50": NULLABLE_NUMBER,
            "p90": NULLABLE_NUMBER,
            "buckets": array({"type": "integer"}),
        },
    )


SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        ["error"],
        {
            "error": {"type": "string"},
            "errors": array(
                obj(
                    ["path", "message"], {"path": {"type": "string"}, "message": {"type": "string"}}
                )
            ),
        },
    ),
    "Health": obj(["status"], {"status": {"type": "string"}, "error": {"type": "string"}}),
    "Readiness": obj(
        ["status", "reasons", "loops"],
        {
            "status": {"enum": ["ready", "not ready"]},
            "reasons": array({"type": "string"}),
            "loops": array(
                obj(
                    ["name", "alive", "last_error"],
                    {
                        "name": {"type": "string"},
                        "alive": {"type": "boolean"},
                        "last_error": NULLABLE_STRING,
                        "restarts": {"type": "integer"},
                        "since": {"type": "number", "description": "epoch seconds"},
                    },
                )
            ),
        },
    ),
    "Poller": obj(
        [
            "store",
            "source",
            "baseline_done",
            "last_poll_at",
            "open_jobs",
            "known_jobs",
            "consecutive_failures",
            "counters",
        ],
        {
            "store": {"type": "string"},
            "source": {"enum": ["pcm", "v2"]},
            "baseline_done": {"type": "boolean"},
            "last_poll_at": TIMESTAMP,
            "open_jobs": {"type": "integer"},
            "known_jobs": {"type": "integer"},
            "consecutive_failures": {"type": "integer"},
            "counters": {"type": "object"},
        },
    ),
    "SubscriptionStatus": obj(
        [
            "name",
            "type",
            "configured",
            "enabled",
            "disabled_reason",
            "last_success_at",
            "last_failure_at",
            "last_error",
            "failing_since",
            "retrying",
            "dead_letters",
            "backlog",
        ],
        {
            "name": {"type": "string"},
            "type": {"type": "string"},
            "configured": {"type": "boolean"},
            **HEALTH_PROPERTIES,
            "backlog": {"type": "integer", "description": "events it still owes"},
            "counters": {"type": "object"},
        },
    ),
    "Status": obj(
        ["pollers", "outboxes", "subscriptions"],
        {
            "pollers": array(ref("Poller")),
            "readiness": ref("Readiness"),
            "outboxes": {
                "type": "object",
                "additionalProperties": obj(
                    ["length", "pending", "lag"],
                    {
                        "length": {"type": "integer"},
                        "pending": {"type": ["integer", "null"]},
                        "lag": {"type": ["integer", "null"]},
                    },
                ),
            },
            "subscriptions": array(ref("SubscriptionStatus")),
        },
    ),
    "CloudEvent": obj(
        ["specversion", "id", "source", "type", "subject", "time", "sequence", "data"],
        {
            "specversion": {"const": "1.0"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "subject": {"type": "string"},
            "time": {"type": "string"},
            "datacontenttype": {"type": "string"},
            "sequence": {"type": "string"},
            "data": {"type": "object"},
        },
    ),
    "Attempt": obj(
        ["subscription", "event_id", "attempt", "at", "ok", "status", "duration_ms", "reason"],
        {
            "subscription": {"type": "string"},
            "event_id": {"type": "string"},
            "attempt": {"type": "integer"},
            "at": {"type": "string"},
            "ok": {"type": "integer", "enum": [0, 1]},
            "status": {"type": ["integer", "string"], "description": '"" when none'},
            "duration_ms": {"type": "number"},
            "reason": {"type": "string"},
            "response": {"type": "string", "description": "first 1 KB of the reply"},
        },
    ),
    "Attempts": obj(["attempts"], {"attempts": array(ref("Attempt"))}),
    "Delivery": obj(
        ["state", "attempts", "last_status", "last_at", "last_reason"],
        {
            "state": {"enum": ["delivered", "failing", "waiting"]},
            "attempts": {"type": "integer"},
            "last_status": {"type": ["integer", "null"]},
            "last_at": NULLABLE_STRING,
            "last_reason": NULLABLE_STRING,
        },
    ),
    "RecentEvent": obj(
        [
            "id",
            "store",
            "source",
            "job_id",
            "job_type",
            "status",
            "previous_status",
            "time",
            "deliveries",
            "event",
        ],
        {
            "id": {"type": "string"},
            "store": {"type": "string"},
            "source": {"type": "string"},
            "job_id": {"type": "string"},
            "job_type": {"type": "string"},
            "status": {"type": "string"},
            "previous_status": NULLABLE_STRING,
            "time": {"type": "string"},
            "deliveries": {
                "type": "object",
                "additionalProperties": ref("Delivery"),
                "description": "by subscription the event is routed to",
            },
            "event": ref("CloudEvent"),
        },
    ),
    "RecentEvents": obj(["events"], {"events": array(ref("RecentEvent"))}),
    "DeadLetter": obj(
        ["entry_id", "subscription", "event_id", "reason", "attempts", "failed_at", "event"],
        {
            "entry_id": {"type": "string"},
            "subscription": {"type": "string"},
            "event_id": {"type": "string"},
            "reason": {"type": "string"},
            "attempts": {"type": "integer"},
            "failed_at": {"type": "string"},
            "event": ref("CloudEvent"),
        },
    ),
    "DeadLetters": obj(
        ["dead_letters", "total"],
        {"dead_letters": array(ref("DeadLetter")), "total": {"type": "integer"}},
    ),
    "ReplayRequest": obj(
        [],
        {
            "subscription": {"type": "string"},
            "id": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            "all": {"type": "boolean"},
        },
        additionalProperties=False,
        description='exactly one of "id" or "all": true',
    ),
    "ReplayResult": obj(["queued"], {"queued": {"type": "integer"}}),
    "Duration": _duration(),
    "JobTypeActivity": obj(
        [
            "store",
            "source",
            "job_type",
            "success",
            "failed",
            "cancelled",
            "totals",
            "run",
            "wait",
            "run_avg",
            "wait_avg",
        ],
        {
            "store": {"type": "string"},
            "source": {"type": "string"},
            "job_type": {"type": "string"},
            "success": array({"type": "integer"}),
            "failed": array({"type": "integer"}),
            "cancelled": array({"type": "integer"}),
            "totals": {"type": "object"},
            "run": ref("Duration"),
            "wait": ref("Duration"),
            "run_avg": array(NULLABLE_NUMBER),
            "wait_avg": array(NULLABLE_NUMBER),
        },
    ),
    "Analytics": obj(
        ["minutes", "step_seconds", "start", "end", "bounds", "types"],
        {
            "minutes": {"type": "integer"},
            "step_seconds": {"type": "integer"},
            "start": {"type": "string"},
            "end": {"type": "string"},
            "bounds": array({"type": "number"}),
            "types": array(ref("JobTypeActivity")),
        },
    ),
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


ERRORS = {
    "400": _json("Error", "bad query or body"),
    "401": _json("Error", "missing or wrong bearer token"),
    "403": _json("Error", "no token configured and the Host is not a loopback name"),
}
NOT_FOUND = {"404": _json("Error", "unknown subscription or store")}


def _query(name: str, description: str, kind: str = "integer") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind, "minimum": 1} if kind == "integer" else {"type": kind},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _get(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list | None = None,
    open_: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **(extra or {})}}
    if params:
        op["parameters"] = params
    if open_:
        op["security"] = []
    else:
        op["responses"].update(ERRORS)
    return {"get": op}


_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_READY = {"503": _json("Readiness", "not ready: see reasons")}

PATHS: dict[str, dict[str, Any]] = {
    "/": _get("The console (a static page)", {"description": "HTML", "content": _HTML}, open_=True),
    "/console/{asset}": _get(
        "A static asset of the console",
        {"description": "the file"},
        open_=True,
        params=[_path("asset")],
        extra={"404": _json("Error", "no such asset")},
    ),
    "/healthz": _get(
        "Liveness: Redis answers",
        _json("Health", "ok"),
        open_=True,
        extra={"503": _json("Health", "Redis unreachable")},
    ),
    "/readyz": _get(
        "Readiness: Redis answers and every loop runs",
        _json("Readiness", "ready"),
        open_=True,
        extra=_READY,
    ),
    "/openapi.json": _get("This document", {"description": "OpenAPI 3.1"}, open_=True),
    "/status": _get("Every poller and subscription", _json("Status", "status")),
    "/metrics": _get("Prometheus text format", {"description": "metrics", "content": _TEXT}),
    "/events": _get(
        "The latest events of the outboxes, with their deliveries per subscription",
        _json("RecentEvents", "newest first"),
        params=[
            _query("count", "how many (default 50, at most 500)"),
            _query("store", "only this store", "string"),
        ],
        extra=NOT_FOUND,
    ),
    "/events/{event_id}/attempts": _get(
        "Every delivery attempt of one event",
        _json("Attempts", "oldest first"),
        params=[_path("event_id")],
    ),
    "/subscriptions/{name}/attempts": _get(
        "The latest attempts of one subscription",
        _json("Attempts", "oldest first"),
        params=[_path("name"), _query("count", "how many (default 100, at most 1000)")],
        extra=NOT_FOUND,
    ),
    "/dlq": _get(
        "Dead letters",
        _json("DeadLetters", "oldest first; total: all dead letters"),
        params=[
            _query("subscription", "only this subscription", "string"),
            _query("count", "only the newest N (default: all)"),
        ],
        extra=NOT_FOUND,
    ),
    "/dlq/replay": {
        "post": {
            "summary": "Send dead letters again (they go back on the retry schedule, due now)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("ReplayRequest")}},
            },
            "responses": {
                "200": _json("ReplayResult", "how many were queued"),
                **ERRORS,
                **NOT_FOUND,
                "415": _json("Error", "content-type is not application/json"),
            },
        }
    },
    "/analytics": _get(
        "Finished jobs per store, source and type over time; wait and run durations",
        _json("Analytics", "one series per job type"),
        params=[
            _query("minutes", "window (default 60, at most 7 days)"),
            _query("store", "only this store", "string"),
        ],
        extra=NOT_FOUND,
    ),
}


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may extend it)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "jobs-bridge admin API",
                "version": __version__,
                "description": "Health, status, metrics, events, dead letters and analytics "
                "of a running jobs-bridge. Requests that change something need content-type "
                "application/json. Without api.token only loopback Host names are served.",
            },
            "security": [{"bearer": []}],
            "paths": PATHS,
            "components": {
                "schemas": SCHEMAS,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }
    )
