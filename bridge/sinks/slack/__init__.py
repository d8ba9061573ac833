"""Slack sink, one module per idea.

sink      the subscription model and the sink: routes each event, writes the log lines
api       Slack's HTTP side: one request at a time, paced, answers classified by error code
messages  bot mode: one message per job, edited in place, errors threaded under it
digest    failures past the threshold folded into one message per window
render    the Block Kit messages themselves, within Slack's limits
"""

from bridge.sinks.slack.sink import SlackSink, SlackSubscription

__all__ = ["SlackSink", "SlackSubscription"]
