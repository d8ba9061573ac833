"""Config loading: the example files, `${VAR}` substitution, durations, and every problem's path."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from bridge import events, logs
from bridge.config import (
    DEFAULT_RETRY_SCHEDULE,
    BridgeConfig,
    ConfigError,
    Filter,
    Status,
    load_config,
    parse_config,
    parse_duration,
)
from bridge.sinks.nats import NatsSubscription
from bridge.sinks.rabbitmq import RabbitMQSubscription
from bridge.sinks.redis_stream import RedisStreamSubscription
from bridge.sinks.slack import SlackSubscription
from bridge.sinks.webhook import WebhookSubscription

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"
MINIMAL = ROOT / "config" / "minimal.yaml"

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EXAMPLE_ENV = {
    "EP_CLIENT_ID": "client-id",
    "EP_CLIENT_SECRET": "example-client-secret",
    "WEBHOOK_SECRET": WHSEC,
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
    "BRIDGE_API_TOKEN": "example-api-token",
}

# A valid config as data: each test changes one thing and expects one problem at one path.
BASE: dict[str, Any] = {
    "stores": [
        {
            "name": "us-main",
            "api_base": "https://useast.api.elasticpath.com",
            "client_id": "id",
            "client_secret": "client-secret-value",
        }
    ],
    "subscriptions": [
        {"name": "hooks", "type": "webhook", "url": "https://example.com/h", "secrets": [WHSEC]},
        {"name": "slack", "type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X"},
    ],
}


def config_text(change: Any = None) -> str:
    data = copy.deepcopy(BASE)
    if change is not None:
        change(data)
    return yaml.safe_dump(data, sort_keys=False)


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def store(data: dict[str, Any]) -> dict[str, Any]:
    return data["stores"][0]


def webhook(data: dict[str, Any]) -> dict[str, Any]:
    return data["subscriptions"][0]


def slack(data: dict[str, Any]) -> dict[str, Any]:
    return data["subscriptions"][1]


# --- the shipped examples ------------------------------------------------------------------


def test_example_config_loads_with_every_subscription_type() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)

    assert [type(sub) for sub in config.subscriptions] == [
        WebhookSubscription,
        SlackSubscription,
        RedisStreamSubscription,
        RabbitMQSubscription,
        NatsSubscription,
    ]
    (us_main,) = config.stores
    assert us_main.client_secret.get_secret_value() == "example-client-secret"
    assert us_main.sources == ["pcm", "v2"]
    assert (us_main.poll_interval, us_main.idle_poll_interval, us_main.stall_after) == (5, 30, 1800)
    hooks, slack_sub, stream, amqp, nats = config.subscriptions
    assert isinstance(hooks, WebhookSubscription)
    assert [s.get_secret_value() for s in hooks.secrets] == [WHSEC]
    assert hooks.retry_schedule == list(DEFAULT_RETRY_SCHEDULE)
    assert hooks.filter.statuses == ["failed", "success"]
    assert isinstance(slack_sub, SlackSubscription) and slack_sub.token is None
    assert isinstance(amqp, RabbitMQSubscription)
    assert amqp.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert isinstance(nats, NatsSubscription) and nats.stream == "EP_JOBS"
    assert isinstance(stream, RedisStreamSubscription) and stream.maxlen == 100_000
    assert config.api is not None and config.api.port == 8787


def test_minimal_config_loads_with_defaults_and_no_environment() -> None:
    config = load_config(MINIMAL, environ={})

    assert config.redis.url is None
    assert config.data_dir == Path("var")
    (sim,) = config.stores
    assert (sim.api_base, sim.client_id) == ("http://127.0.0.1:8765", "sim-client")
    assert sim.client_secret.get_secret_value() == "sim-secret"
    assert (sim.backfill, sim.page_limit, sim.max_requests_per_second) == ("baseline", 100, 5)
    (hooks,) = config.subscriptions
    assert isinstance(hooks, WebhookSubscription)
    assert hooks.allow_private_networks is True and config.subscription_allows_private(hooks)
    assert (hooks.timeout, hooks.disable_after, hooks.concurrency) == (15, 5 * 86400, 10)
    assert config.outbox_retention == 7 * 86400
    # The bounds of kept state, as config/example.yaml documents them.
    assert (config.dead_letter_retention, config.attempt_retention) == (30 * 86400, 7 * 86400)
    assert (config.consumer_retention, config.outbox_max_entries) == (3600, 1_000_000)
    assert config.attempt_log_max == 10_000


def test_loaded_secrets_are_masked_by_the_logger() -> None:
    load_config(EXAMPLE, environ={**EXAMPLE_ENV, "RABBITMQ_URL": "amqp://bridge:amqp-pw-1@mq/"})

    for secret in ("example-client-secret", WHSEC, "example-api-token", "amqp-pw-1"):
        assert logs.redact_text(f"saw {secret}") == f"saw {logs.REDACTED}"


# --- the real command line -----------------------------------------------------------------


def run_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "-c", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(config_text())

    result = run_check_config(path)

    assert result.returncode == 0, result.stderr
    assert "valid (1 store(s), 2 subscription(s))" in result.stdout


def test_check_config_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    def break_it(data: dict[str, Any]) -> None:
        store(data)["name"] = "US_Main"
        webhook(data)["retry_schedule"] = ["5s", "soon"]
        slack(data)["colour"] = "red"

    path = tmp_path / "bad.yaml"
    path.write_text(config_text(break_it))

    result = run_check_config(path)

    assert result.returncode == 1
    lines = result.stdout.splitlines()  # the problems are check-config's output
    assert any(line.startswith("stores[0].name: ") for line in lines)
    assert any(line.startswith("subscriptions[0].retry_schedule[1]: ") for line in lines)
    assert any(line.startswith("subscriptions[1].colour: unknown key") for line in lines)
    assert f"{path}: 3 problem(s)" in result.stdout


# --- one mistake, one path -----------------------------------------------------------------


def _set(target: Any, key: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target(data)[key] = value

    return change


def _top(data: dict[str, Any]) -> dict[str, Any]:
    return data


MISTAKES = [
    pytest.param(
        _set(_top, "colour", "blue"),
        "colour: unknown key (allowed: redis, data_dir,",
        id="unknown-top-level-key",
    ),
    pytest.param(
        _set(store, "pol_interval", "5s"),
        "stores[0].pol_interval: unknown key (allowed: name, api_base,",
        id="unknown-store-key",
    ),
    pytest.param(
        _set(webhook, "urll", "x"),
        "subscriptions[0].urll: unknown key (allowed: name, type,",
        id="unknown-subscription-key",
    ),
    pytest.param(
        _set(slack, "filter", {"status": ["failed"]}),
        "subscriptions[1].filter.status: unknown key (allowed: stores, sources, job_types, stat",
        id="unknown-filter-key",
    ),
    pytest.param(
        _set(webhook, "retry_schedule", ["5s", "5m", "30m", "abc"]),
        "subscriptions[0].retry_schedule[3]: invalid duration 'abc' (use 500ms, 5s, 30m, 2h or 5d)",
        id="bad-duration",
    ),
    pytest.param(
        _set(store, "stall_after", "-5m"),
        "stores[0].stall_after: invalid duration '-5m': must not be negative",
        id="negative-duration",
    ),
    pytest.param(
        _set(store, "poll_interval", "0s"),
        "stores[0].poll_interval: must be longer than zero",
        id="zero-interval",
    ),
    pytest.param(
        _set(store, "name", "US_Main"),
        "stores[0].name: 'US_Main' is not a valid name",
        id="bad-store-name",
    ),
    pytest.param(
        _set(webhook, "name", "no spaces"),
        "subscriptions[0].name: 'no spaces' is not a valid name",
        id="bad-subscription-name",
    ),
    pytest.param(
        lambda d: d["stores"].append({**store(d)}),
        "stores[1].name: duplicate name 'us-main' (also stores[0])",
        id="duplicate-store",
    ),
    pytest.param(
        _set(slack, "name", "hooks"),
        "subscriptions[1].name: duplicate name 'hooks' (also subscriptions[0])",
        id="duplicate-subscription",
    ),
    pytest.param(
        _set(webhook, "url", "ftp://example.com/h"),
        "subscriptions[0].url: must be a URL starting with http:// or https://",
        id="webhook-scheme",
    ),
    pytest.param(
        _set(store, "api_base", "example.com"),
        "stores[0].api_base: must be a URL starting with http:// or https://",
        id="api-base-scheme",
    ),
    pytest.param(
        _set(_top, "redis", {"url": "http://127.0.0.1:6379"}),
        "redis.url: must be a URL starting with redis://, rediss:// or unix://",
        id="redis-scheme",
    ),
    pytest.param(
        lambda d: d["subscriptions"].append({"name": "q", "type": "rabbitmq", "url": "redis://h"}),
        "subscriptions[2].url: must be a URL starting with amqp:// or amqps://",
        id="amqp-scheme",
    ),
    pytest.param(
        lambda d: d["subscriptions"].append({"name": "n", "type": "nats", "url": "http://h"}),
        "subscriptions[2].url: must be a URL starting with nats:// or tls://",
        id="nats-scheme",
    ),
    pytest.param(
        lambda d: d["subscriptions"].append(
            {"name": "s", "type": "redis_stream", "url": "amqp://h"}
        ),
        "subscriptions[2].url: must be a URL starting with redis://, rediss:// or unix://",
        id="redis-stream-scheme",
    ),
    pytest.param(
        _set(webhook, "secrets", [WHSEC, "not-a-whsec"]),
        "subscriptions[0].secrets[1]: must start with 'whsec_'",
        id="secret-prefix",
    ),
    pytest.param(
        _set(webhook, "secrets", ["whsec_***"]),
        "subscriptions[0].secrets[0]: must be 'whsec_' followed by valid base64",
        id="secret-base64",
    ),
    pytest.param(
        _set(webhook, "secrets", []), "subscriptions[0].secrets: must not be empty", id="no-secrets"
    ),
    pytest.param(
        lambda d: webhook(d).pop("secrets"),
        "subscriptions[0].secrets: is required",
        id="missing-secrets",
    ),
    pytest.param(
        _set(slack, "token", "xoxb-1"),
        "subscriptions[1]: set webhook_url (incoming webhook) or token",
        id="slack-both-modes",
    ),
    pytest.param(
        lambda d: slack(d).pop("webhook_url"),
        "subscriptions[1]: set webhook_url (incoming webhook) or token + channel (bot)",
        id="slack-no-mode",
    ),
    pytest.param(
        lambda d: d["subscriptions"].__setitem__(
            1, {"name": "s", "type": "slack", "token": "xoxb-1"}
        ),
        "subscriptions[1].channel: is required with token",
        id="slack-token-without-channel",
    ),
    pytest.param(
        _set(slack, "channel", "#ops"),
        "subscriptions[1].channel: is for bot mode (token)",
        id="slack-channel-with-webhook-url",
    ),
    pytest.param(
        _set(slack, "link_template", "https://x/{job}/{store}"),
        "subscriptions[1].link_template: unknown placeholder {job} (allowed: {job_id},",
        id="slack-link-placeholder",
    ),
    pytest.param(
        _set(webhook, "type", "kafka"),
        "subscriptions[0].type: unknown type 'kafka' (allowed: webhook, slack, redis_stream",
        id="unknown-subscription-type",
    ),
    pytest.param(
        lambda d: webhook(d).pop("type"),
        "subscriptions[0].type: is required (one of: webhook,",
        id="missing-subscription-type",
    ),
    pytest.param(
        _set(webhook, "filter", {"statuses": ["failed", "done"]}),
        "subscriptions[0].filter.statuses[1]: must be 'pending', 'started', 'success', 'failed', "
        "'cancelled' or 'stalled' (got 'done')",
        id="filter-unknown-status",
    ),
    pytest.param(
        _set(webhook, "filter", {"sources": ["v3"]}),
        "subscriptions[0].filter.sources[0]: must be 'pcm' or 'v2' (got 'v3')",
        id="filter-unknown-source",
    ),
    pytest.param(
        _set(webhook, "filter", {"stores": ["us-main", "eu-main"]}),
        "subscriptions[0].filter.stores[1]: unknown store 'eu-main' (stores: us-main)",
        id="filter-unknown-store",
    ),
    pytest.param(
        _set(webhook, "filter", {"job_types": []}),
        "subscriptions[0].filter.job_types: must not be empty (leave the key out",
        id="filter-empty-list",
    ),
    pytest.param(
        lambda d: store(d).update(poll_interval="1m", idle_poll_interval="30s"),
        "stores[0].idle_poll_interval: must be at least poll_interval (1m)",
        id="idle-below-poll",
    ),
    pytest.param(
        _set(store, "sources", ["pcm", "pcm"]),
        "stores[0].sources[1]: 'pcm' is listed twice",
        id="duplicate-source",
    ),
    pytest.param(
        _set(store, "sources", []), "stores[0].sources: must not be empty", id="no-sources"
    ),
    pytest.param(
        _set(store, "max_requests_per_second", 500),
        "stores[0].max_requests_per_second: must be at most 100 (the API's own limit)",
        id="rps-limit",
    ),
    pytest.param(
        _set(store, "page_limit", 0),
        "stores[0].page_limit: must be greater than or equal to 1",
        id="page-limit",
    ),
    pytest.param(
        _set(store, "backfill", "replay"),
        "stores[0].backfill: must be 'baseline' or 'emit' (got 'replay')",
        id="backfill-literal",
    ),
    pytest.param(
        lambda d: store(d).pop("client_id"), "stores[0].client_id: is required", id="missing-field"
    ),
    pytest.param(
        _set(webhook, "concurrency", 0),
        "subscriptions[0].concurrency: must be greater than or equal to 1",
        id="concurrency",
    ),
    pytest.param(
        _set(webhook, "enabled", "maybe"),
        "subscriptions[0].enabled: must be true or false",
        id="bool",
    ),
    pytest.param(
        _set(_top, "api", {"listen": "8787"}), "api.listen: must be host:port", id="api-listen"
    ),
    pytest.param(
        _set(_top, "api", {"listen": "0.0.0.0:8787"}),
        "api.token: is required when listen is not a loopback address",
        id="api-open-without-token",
    ),
    pytest.param(
        _set(_top, "log_level", "loud"),
        "log_level: must be one of debug, info, warning, error",
        id="log-level",
    ),
    pytest.param(_set(_top, "stores", []), "stores: must not be empty", id="no-stores"),
    pytest.param(lambda d: d.pop("stores"), "stores: is required", id="missing-stores"),
    pytest.param(
        lambda d: d["subscriptions"].append("webhook"),
        "subscriptions[2]: must be a mapping of keys",
        id="subscription-not-a-mapping",
    ),
    # Minima (issue 9): each would have been accepted, and each defeats what it configures.
    pytest.param(
        _set(webhook, "retry_schedule", []),
        "subscriptions[0].retry_schedule: must list at least one delay, e.g. [5s]",
        id="no-retries",
    ),
    pytest.param(
        _set(webhook, "secrets", ["whsec_" + base64.b64encode(b"k").decode()]),
        "subscriptions[0].secrets[0]: must decode to 24-64 bytes (Standard Webhooks); "
        "this one has 1",
        id="secret-too-short",
    ),
    pytest.param(
        _set(webhook, "secrets", ["whsec_" + base64.b64encode(bytes(65)).decode()]),
        "subscriptions[0].secrets[0]: must decode to 24-64 bytes (Standard Webhooks); "
        "this one has 65",
        id="secret-too-long",
    ),
    pytest.param(
        _set(_top, "outbox_retention", "1ms"),
        "outbox_retention: must be at least 1h (got 1ms)",
        id="outbox-retention-1ms",
    ),
    pytest.param(
        _set(_top, "dead_letter_retention", "59m"),
        "dead_letter_retention: must be at least 1h (got 59m)",
        id="dead-letter-retention",
    ),
    pytest.param(
        _set(_top, "attempt_retention", "10s"),
        "attempt_retention: must be at least 1h (got 10s)",
        id="attempt-retention",
    ),
    pytest.param(
        _set(_top, "consumer_retention", "30m"),
        "consumer_retention: must be at least 1h (got 30m)",
        id="consumer-retention",
    ),
    pytest.param(
        _set(_top, "outbox_max_entries", 10),
        "outbox_max_entries: ",
        id="outbox-cap",
    ),
]


@pytest.mark.parametrize(("change", "expected"), MISTAKES)
def test_each_mistake_is_reported_at_its_path(change: Any, expected: str) -> None:
    problems = problems_of(config_text(change))

    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_missing_environment_variable_is_named_at_its_path() -> None:
    text = config_text(_set(store, "client_secret", "${EP_CLIENT_SECRET}"))

    assert problems_of(text) == [
        "stores[0].client_secret: environment variable EP_CLIENT_SECRET is not set"
    ]


def test_several_problems_are_reported_together_in_file_order() -> None:
    def break_it(data: dict[str, Any]) -> None:
        store(data)["client_secret"] = "${EP_CLIENT_SECRET}"
        store(data)["poll_interval"] = "fast"
        webhook(data)["secrets"] = ["${WEBHOOK_SECRET}"]
        webhook(data)["filter"] = {"stores": ["nowhere"]}
        slack(data)["type"] = "teams"
        data["surprise"] = True

    problems = problems_of(config_text(break_it))

    assert [problem.split(":")[0] for problem in problems] == [
        "stores[0].client_secret",
        "stores[0].poll_interval",
        "subscriptions[0].secrets[0]",
        "subscriptions[0].filter.stores[0]",
        "subscriptions[1].type",
        "surprise",
    ]


def test_a_missing_variable_is_not_reported_twice() -> None:
    text = config_text(_set(store, "poll_interval", "${POLL}"))

    assert problems_of(text) == ["stores[0].poll_interval: environment variable POLL is not set"]


# --- secrets stay out of messages ------------------------------------------------------------

LEAKY = [
    pytest.param(
        _set(slack, "webhook_url", "hooks.slack.com/T0/B0/LEAKME123"), id="slack-url-no-scheme"
    ),
    pytest.param(_set(slack, "webhook_url", "LEAKME123:not-a-url"), id="slack-url-garbage"),
    pytest.param(_set(webhook, "secrets", ["LEAKME123"]), id="whsec-prefix"),
    pytest.param(_set(webhook, "secrets", ["whsec_LEAKME123!!"]), id="whsec-base64"),
    pytest.param(_set(store, "client_secret", ["LEAKME123"]), id="secret-wrong-type"),
    pytest.param(
        lambda d: d["subscriptions"].append(
            {"name": "q", "type": "rabbitmq", "url": "http://user:LEAKME123@mq/"}
        ),
        id="broker-credentials",
    ),
    pytest.param(
        lambda d: d["subscriptions"].append(
            {"name": "q", "type": "rabbitmq", "url": "amqp://user:LEAKME123@mq:port/"}
        ),
        id="broker-bad-port",
    ),
    pytest.param(_set(_top, "api", {"listen": "127.0.0.1:1", "token": ""}), id="empty-token"),
    pytest.param(_set(store, "client_secret", "LEAKME123${"), id="unclosed-reference"),
]


@pytest.mark.parametrize("change", LEAKY)
def test_secret_values_never_appear_in_problems(change: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(change), {})

    assert caught.value.problems
    assert "LEAKME123" not in str(caught.value)


def test_yaml_errors_do_not_quote_the_offending_line() -> None:
    text = "stores:\n  - client_secret: LEAKME123: x\n"

    problems = problems_of(text)

    assert problems[0].startswith("<config>: line 2, column ")
    assert "LEAKME123" not in problems[0]


# --- environment substitution ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${EP_SECRET}", {"EP_SECRET": "from-env"}, "from-env"),
        ("${EP_SECRET:-fallback}", {}, "fallback"),
        ("${EP_SECRET:-fallback}", {"EP_SECRET": ""}, "fallback"),
        ("${EP_SECRET:-fallback}", {"EP_SECRET": "set"}, "set"),
        ("${EP_SECRET:-a:b-c}", {}, "a:b-c"),
        ("pre-${A}-${B:-two}-post", {"A": "one"}, "pre-one-two-post"),
        ("pa$$word", {}, "pa$$word"),
        ("$${NOT_A_VAR}", {}, "${NOT_A_VAR}"),
    ],
)
def test_environment_substitution(value: str, environ: dict[str, str], expected: str) -> None:
    config = parse_config(config_text(_set(store, "client_secret", value)), environ)

    assert config.stores[0].client_secret.get_secret_value() == expected


def test_substituted_values_are_validated_as_their_field_type() -> None:
    def use_env(data: dict[str, Any]) -> None:
        store(data)["max_requests_per_second"] = "${RPS:-2.5}"
        store(data)["poll_interval"] = "${POLL:-2s}"
        webhook(data)["allow_private_networks"] = "${PRIVATE:-true}"

    config = parse_config(config_text(use_env), {"POLL": "500ms"})

    assert config.stores[0].max_requests_per_second == 2.5
    assert config.stores[0].poll_interval == 0.5
    assert config.subscriptions[0].allow_private_networks is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${not valid}", "invalid reference: use ${NAME} or ${NAME:-default}"),
        ("abc${", "unclosed '${' (write '$${' for a literal '${')"),
    ],
)
def test_malformed_references_are_problems(value: str, problem: str) -> None:
    problems = problems_of(config_text(_set(store, "client_id", value)))

    assert problems == [f"stores[0].client_id: {problem}"]


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("5d", 432000.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        (" 10s ", 10.0),
        ("90", 90.0),
        ("0.25", 0.25),
        ("0s", 0.0),
        (15, 15.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["abc", "", "5 s", "5sec", "-5s", "5S", "1w", -1, -0.5, True, None, [5], "nan", "inf"]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_duration_fields_hold_seconds() -> None:
    config = parse_config(config_text(_set(webhook, "retry_schedule", ["500ms", 10, "1h30m"])), {})

    assert config.subscriptions[0].retry_schedule == [0.5, 10.0, 5400.0]


# --- files and YAML --------------------------------------------------------------------------


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stores:\n  - name: a\n    sources: [pcm\n  api: x\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: line 4, column ")


def test_duplicate_yaml_keys_are_errors() -> None:
    (problem,) = problems_of("stores:\n  - name: a\n    name: b\n")

    assert (
        problem
        == "<config>: line 3, column 5: found duplicate key 'name' (while reading a mapping)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "<config>: the file is empty"),
        ("# only a comment\n", "<config>: the file is empty"),
        (
            "- a\n- b\n",
            "<config>: must be a mapping of keys (redis, stores, ...) at the top level, not a list",
        ),
        (
            "just text\n",
            "<config>: must be a mapping of keys (redis, stores, ...) at the top level, not a str",
        ),
    ],
)
def test_empty_or_non_mapping_files(text: str, expected: str) -> None:
    (problem,) = problems_of(text)

    assert problem.startswith(expected)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")

    assert caught.value.problems == [f"{tmp_path / 'nope.yaml'}: file not found"]


# --- the models' own behaviour ---------------------------------------------------------------


def test_status_names_match_the_event_contract() -> None:
    assert get_args(Status) == events.EVENT_STATUSES


def test_filter_matches() -> None:
    everything = Filter()
    failed_imports = Filter(job_types=["product-import"], statuses=["failed", "stalled"])

    assert everything.matches("us-main", "pcm", "anything", "success")
    assert failed_imports.matches("us-main", "pcm", "product-import", "failed")
    assert not failed_imports.matches("us-main", "pcm", "product-import", "success")
    assert not failed_imports.matches("us-main", "pcm", "price-import", "failed")
    assert not Filter(stores=["eu"], sources=["v2"]).matches("us-main", "v2", "x", "failed")


def test_private_networks_follow_the_subscription_then_the_top_level() -> None:
    def configure(data: dict[str, Any]) -> None:
        data["allow_private_networks"] = True
        webhook(data)["allow_private_networks"] = False

    config = parse_config(config_text(configure), {})
    hooks, slack_sub = config.subscriptions

    assert config.subscription_allows_private(hooks) is False
    assert config.subscription_allows_private(slack_sub) is True
    assert BridgeConfig.model_validate(BASE).subscription_allows_private(slack_sub) is False


def test_urls_are_normalised() -> None:
    def configure(data: dict[str, Any]) -> None:
        store(data)["api_base"] = "http://127.0.0.1:8765/"
        data["subscriptions"][1] = {
            "name": "bot",
            "type": "slack",
            "token": "xoxb-1",
            "channel": "#ops",
            "api_base_url": "http://127.0.0.1:9001/api",
        }

    config = parse_config(config_text(configure), {})

    assert config.stores[0].api_base == "http://127.0.0.1:8765"
    assert config.subscriptions[1].api_base_url == "http://127.0.0.1:9001/api/"  # type: ignore[union-attr]


def test_api_listen_splits_into_host_and_port() -> None:
    config = parse_config(config_text(_set(_top, "api", {"listen": "[::1]:9000"})), {})

    assert config.api is not None
    assert (config.api.host, config.api.port) == ("::1", 9000)


def test_empty_subscriptions_section_means_none() -> None:
    config = parse_config(config_text(_set(_top, "subscriptions", None)), {})

    assert config.subscriptions == []
