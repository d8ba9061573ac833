"""Every subscription type: its config model and its sink.

A new sink is one module (its model and its sink class) and one line in SINKS (plus its name
in the import). The config builds its subscription union from this table, and the app its
sinks; importing it imports no client library (see bridge.sinks.base).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Union

from pydantic import Field

from bridge.config.subscription import SubscriptionBase
from bridge.sinks import nats, rabbitmq, redis_stream, slack, webhook
from bridge.sinks.base import Sink, SinkContext


class SinkType(NamedTuple):
    model: type[SubscriptionBase]
    sink: type[Sink[Any]]


SINKS: dict[str, SinkType] = {
    "webhook": SinkType(webhook.WebhookSubscription, webhook.WebhookSink),
    "slack": SinkType(slack.SlackSubscription, slack.SlackSink),
    "redis_stream": SinkType(redis_stream.RedisStreamSubscription, redis_stream.RedisStreamSink),
    "rabbitmq": SinkType(rabbitmq.RabbitMQSubscription, rabbitmq.RabbitMQSink),
    "nats": SinkType(nats.NatsSubscription, nats.NatsSink),
}

# One subscription entry of the config file: the model its `type` names. Type checkers see
# the base class every entry shares; pydantic sees the union built from the table.
if TYPE_CHECKING:
    Subscription = SubscriptionBase
else:
    Subscription = Annotated[
        Union[tuple(entry.model for entry in SINKS.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]


class MissingExtra(RuntimeError):
    """A subscription type whose client library is an optional extra that is not installed."""


def build_sink(sub: SubscriptionBase, context: SinkContext) -> Sink[Any]:
    """The sink of one subscription; its client library must be importable now."""
    sink = SINKS[sub.type].sink
    for module in sink.requires:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtra(
                f"subscription {sub.name!r} ({sub.type}) needs an optional package: "
                f"pip install 'jobs-bridge[{sub.type}]' ({exc.name} is missing)"
            ) from None
    return sink.from_config(sub, context)
