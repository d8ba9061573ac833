"""Sinks: one destination each. The dispatcher hands them an event; they report what happened.

base: what every sink shares · registry: subscription type -> (config model, sink class)
"""

# The config loads every sink module (for its model) through the registry. Loading it first
# means a sink module imported on its own never meets another sink module half-imported.
import bridge.config  # noqa: F401
from bridge.sinks.base import DeliveryResult, Sink

__all__ = ["DeliveryResult", "Sink"]
