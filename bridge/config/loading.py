"""Reading a config file: YAML (duplicate keys refused), `${VAR}` substitution, validation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError

from bridge import logs
from bridge.config.errors import ConfigError, describe, problem_lines
from bridge.config.models import CROSS_CHECKED, BridgeConfig, cross_problems
from bridge.config.types import Loc


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently resolves to the last."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value!r}",
                    key_node.start_mark,
                )
            seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(text: str, origin: str) -> dict[Any, Any]:
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes the offending line, maybe a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            message += f" ({exc.context})"
        raise ConfigError([f"{origin}: {where}{message}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{origin}: invalid YAML: {exc}"]) from None
    if data is None:
        raise ConfigError([f"{origin}: the file is empty (at least one store is required)"])
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{origin}: must be a mapping of keys (redis, stores, ...) at the "
                f"top level, not a {_kind(data)}"
            ]
        )
    return data


def _kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)


def _substitute(
    text: str, environ: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]
) -> str:
    def replace(match: re.Match[str]) -> str:
        token, body = match.group(0), match.group(1)
        if token == "$${":
            return "${"
        if body is None:
            problems.append((loc, "unclosed '${' (write '$${' for a literal '${')"))
            return token
        reference = _VARIABLE.fullmatch(body)
        if reference is None:
            problems.append((loc, "invalid reference: use ${NAME} or ${NAME:-default}"))
            return token
        name, default = reference.groups()
        value = environ.get(name)
        if default is not None:
            # As in the shell: `:-` also replaces a variable that is set but empty.
            return value if value else default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set"))
            return ""
        return value

    return _REFERENCE.sub(replace, text)


def _resolve(
    node: object, environ: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]
) -> object:
    """Substitute variables in every string scalar; the path of each is known for messages."""
    if isinstance(node, str):
        return _substitute(node, environ, loc, problems)
    if isinstance(node, dict):
        return {
            str(key): _resolve(value, environ, (*loc, str(key)), problems)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_resolve(item, environ, (*loc, index), problems) for index, item in enumerate(node)]
    return node


def _raw_names(data: dict[str, Any]) -> tuple[list[object], list[tuple[object, object]]]:
    def items(key: str) -> list[dict[str, Any]]:
        value = data.get(key)
        if not isinstance(value, list):
            return []
        return [item if isinstance(item, dict) else {} for item in value]

    subscriptions = []
    for sub in items("subscriptions"):
        filter_ = sub.get("filter")
        subscriptions.append(
            (sub.get("name"), filter_.get("stores") if isinstance(filter_, dict) else None)
        )
    return [store.get("name") for store in items("stores")], subscriptions


def parse_config(
    text: str, environ: Mapping[str, str] | None = None, origin: str = "<config>"
) -> BridgeConfig:
    """Validate config text; raise ConfigError listing every problem found."""
    env = os.environ if environ is None else environ
    env_problems: list[tuple[Loc, str]] = []
    data = cast(dict[str, Any], _resolve(_read_yaml(text, origin), env, (), env_problems))
    # Cross-references are checked here, on the raw data, so that they are reported with every
    # other problem (the model's own check runs only once every field is valid).
    problems = env_problems + cross_problems(*_raw_names(data))
    config: BridgeConfig | None = None
    try:
        config = BridgeConfig.model_validate(data, context={CROSS_CHECKED: True})
    except ValidationError as exc:
        # A missing variable left "" behind; its own validation error would only repeat it.
        unset = [loc for loc, _ in env_problems]
        problems += [
            (loc, message)
            for error in exc.errors(include_url=False)
            for loc, message in describe(error)
            if not any(loc[: len(prefix)] == prefix for prefix in unset)
        ]
    if problems or config is None:
        raise ConfigError(problem_lines(problems, data, origin))
    logs.register_secrets(config.secret_values())
    return config


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a config file; raise ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror})"]) from None
    return parse_config(text, environ, origin=str(path))
