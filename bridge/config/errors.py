"""Config problems for people: pydantic's errors as `path: message` lines, in file order."""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from bridge.config.models import BridgeConfig
from bridge.config.types import Invalid, Loc, format_loc
from bridge.sinks.registry import SINKS

_PLAIN_MESSAGES = {
    "missing": "is required",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "list_type": "must be a list",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_too_short": "must not be empty",
}


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one `<path>: <message>` line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def describe(error: Any) -> list[tuple[Loc, str]]:
    """Readable problems for one pydantic error; input values only where they cannot be secret."""
    raw_loc: Loc = tuple(error["loc"])
    loc = _strip_tag(raw_loc)
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    cause = ctx.get("error")
    type_names = ", ".join(SINKS)
    if isinstance(cause, Invalid):
        return [((*loc, *sub_loc), message) for sub_loc, message in cause.problems]
    if isinstance(cause, Exception):
        return [(loc, str(cause))]
    if kind == "extra_forbidden":
        model = _model_at(raw_loc[:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return [(loc, f"unknown key{allowed}")]
    if kind == "union_tag_invalid":
        return [((*loc, "type"), f"unknown type {ctx.get('tag')!r} (allowed: {type_names})")]
    if kind == "union_tag_not_found":
        return [((*loc, "type"), f"is required (one of: {type_names})")]
    if kind == "literal_error":
        return [(loc, f"must be {ctx.get('expected')} (got {error.get('input')!r})")]
    if kind == "too_short" and ctx.get("min_length") == 1:
        return [(loc, "must not be empty")]
    if kind in _PLAIN_MESSAGES:
        return [(loc, _PLAIN_MESSAGES[kind])]
    message: str = error["msg"]
    if message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
    return [(loc, message[:1].lower() + message[1:])]


def problem_lines(problems: list[tuple[Loc, str]], data: object, origin: str) -> list[str]:
    """`path: message` lines, sorted as their values appear in the file, each once."""
    lines = (f"{format_loc(loc) or origin}: {m}" for loc, m in _in_document_order(problems, data))
    return list(dict.fromkeys(lines))


def _strip_tag(loc: Loc) -> Loc:
    # Pydantic puts the discriminator value into the path: subscriptions.0.webhook.url.
    if len(loc) > 2 and loc[0] == "subscriptions" and isinstance(loc[1], int):
        return loc[:2] + loc[3:]
    return loc


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) > 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validated the mapping at `loc` (a raw pydantic loc, tags included)."""
    current: Any = BridgeConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if get_origin(current) is not list:
                return None
            current = get_args(current)[0]
        elif get_origin(current) in (Union, types.UnionType):
            current = SINKS[part].model if part in SINKS else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _document_order(
    node: object, loc: Loc = (), order: dict[Loc, int] | None = None
) -> dict[Loc, int]:
    order = {} if order is None else order
    order[loc] = len(order)
    if isinstance(node, list):
        node = dict(enumerate(node))
    if isinstance(node, dict):
        for key, child in node.items():
            _document_order(child, (*loc, key), order)
    return order


def _in_document_order(problems: list[tuple[Loc, str]], data: object) -> list[tuple[Loc, str]]:
    """Problems sorted as their values appear in the file; a missing key sorts with its parent."""
    order = _document_order(data)

    def position(problem: tuple[Loc, str]) -> int:
        loc = problem[0]
        while loc not in order:
            loc = loc[:-1]
        return order[loc]

    return sorted(problems, key=position)
