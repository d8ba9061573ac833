"""jobs-bridge: Elastic Path job status changes, pushed to webhooks, Slack and queues."""

__version__ = "0.1.0"
