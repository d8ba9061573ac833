"""Every Redis key the bridge uses, named in one place (as arq keeps its in constants.py).

The keys of one store share the hash tag `{<store>}`, those of one subscription `{<name>}`:
each Lua script and transaction then touches a single Redis Cluster slot.

  jb:{<store>}:jobs                 hash    "<source>:<job id>" -> "status|version|seq|stalled"
  jb:{<store>}:open                 zset    non-terminal jobs, score = stall reference (ms)
  jb:{<store>}:meta                 hash    baseline:<source>, full_scan:<source>, count:<source>
  jb:{<store>}:events               stream  the outbox: one entry per event
  jb:{<store>}:analytics:<minute>   hash    finished jobs' counts and durations (analytics.py)
  jb:retry                          zset    "<subscription>\\n<event id>" by due time (ms)
  jb:delivery:<sub>:<event id>      hash    the event and its attempt count, while retried
  jb:dlq                            stream  dead letters: subscription, event id, reason, event
  jb:{<sub>}:attempts               stream  every attempt of one subscription (capped)
  jb:{<sub>}:attempts:<event id>    list    every attempt of one event to it (capped)
  jb:{<sub>}:health                 hash    disabled and why, failing since, last success
  jb:slack:{<sub>}:...              Slack message state and digest buffer (see slack_key)
  jb:{subscriptions}                hash    the API's subscriptions: name -> its entry (JSON)
  jb:{subscriptions}:version        string  counter, raised by every change of that hash
  jb:subscriptions:changed          pubsub  a change's new version, for every running process
"""

from __future__ import annotations

RETRY = "jb:retry"
DEAD_LETTERS = "jb:dlq"
# One hash tag: the catalog and its version change in one transaction (one cluster slot).
SUBSCRIPTIONS = "jb:{subscriptions}"
SUBSCRIPTIONS_VERSION = "jb:{subscriptions}:version"
SUBSCRIPTIONS_CHANNEL = "jb:subscriptions:changed"


def store_key(store: str, kind: str) -> str:
    """One of a store's keys: `jobs`, `open`, `meta`, `events` or `analytics:<minute>`."""
    return f"jb:{{{store}}}:{kind}"


def delivery_key(subscription: str, event_id: str) -> str:
    return f"jb:delivery:{subscription}:{event_id}"


def health_key(subscription: str) -> str:
    return f"jb:{{{subscription}}}:health"


def attempts_key(subscription: str, event_id: str | None = None) -> str:
    """The attempt log of a subscription, or of one event to it."""
    key = f"jb:{{{subscription}}}:attempts"
    return f"{key}:{event_id}" if event_id else key


def slack_key(subscription: str, *parts: str) -> str:
    """A Slack subscription's key: `recent`, `digest`, `stats`, ... or a job's message."""
    return ":".join((f"jb:slack:{{{subscription}}}", *parts))
