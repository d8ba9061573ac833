"""Every Redis key the bridge uses, named in one place (as arq keeps its in constants.py).

The keys of one store share the hash tag `{<store>}`, the delivery state of one subscription
`{sub:<name>}`: each Lua script and transaction then touches a single Redis Cluster slot.

  jb:{<store>}:jobs                 hash    "<source>:<job id>" -> "status|version|seq|stalled"
  jb:{<store>}:open                 zset    non-terminal jobs, score = stall reference (ms)
  jb:{<store>}:meta                 hash    baseline:<source>, full_scan:<source>, count:<source>,
                                            lease_token:<source> (acquisitions of its lease)
  jb:{<store>}:lease:<source>       string  "<token> <process id>": who polls it (bridge.leases)
  jb:{<store>}:events               stream  the outbox: one entry per event; one consumer group
                                            per subscription, `sub:<name>` (see group_name)
  jb:{<store>}:events:trim          string  lease of the replica trimming that outbox now
  jb:{<store>}:analytics:<minute>   hash    finished jobs' counts and durations (analytics.py)
  jb:{sub:<name>}:retry             zset    event ids by due time (ms)
  jb:{sub:<name>}:delivery:<id>     hash    the event and its attempt count, while retried
  jb:{sub:<name>}:dlq               stream  dead letters: event id, reason, attempts, event
  jb:{sub:<name>}:attempts          stream  every attempt of the subscription (capped)
  jb:{sub:<name>}:attempts:<id>     list    every attempt of one event to it (capped)
  jb:{sub:<name>}:health            hash    disabled and why, failing since, last success
  jb:{sub:<name>}:heads             hash    `ordering: job` (bridge.ordering): job -> the id
                                            of its event in flight (attempted or retried)
  jb:{sub:<name>}:parked            hash    every event waiting behind its job's head -> job
  jb:{sub:<name>}:parked:<job>      zset    one job's waiting event ids, by sequence (each
                                            event kept in delivery:<id>)
  jb:{sub:<name>}:admitted          hash    outbox stream -> newest entry id admitted
  jb:lanes                          set     every subscription that ever had delivery state:
                                            readers merge its per-subscription keys
  jb:processes                      zset    process id -> last heartbeat (ms, Redis's clock)
  jb:slack:{<sub>}:...              Slack message state and digest buffer (see slack_key)
  jb:{subscriptions}                hash    the API's subscriptions: name -> its entry (JSON)
  jb:{subscriptions}:version        string  counter, raised by every change of that hash
  jb:subscriptions:changed          pubsub  a change's new version, for every running process

Before lanes (issue 9) every subscription shared the outbox group `dispatch`, the retry
schedule `jb:retry` ("<sub>\\n<event id>"), `jb:delivery:<sub>:<event id>` and the dead-letter
stream `jb:dlq`; a dispatcher starting on such data moves it to the keys above (LEGACY_*).
"""

from __future__ import annotations

LANES = "jb:lanes"
PROCESSES = "jb:processes"
LEGACY_GROUP = "dispatch"
LEGACY_RETRY = "jb:retry"
LEGACY_DEAD_LETTERS = "jb:dlq"
GROUP_PREFIX = "sub:"
# One hash tag: the catalog and its version change in one transaction (one cluster slot).
SUBSCRIPTIONS = "jb:{subscriptions}"
SUBSCRIPTIONS_VERSION = "jb:{subscriptions}:version"
SUBSCRIPTIONS_CHANNEL = "jb:subscriptions:changed"


def store_key(store: str, kind: str) -> str:
    """One of a store's keys: `jobs`, `open`, `meta`, `events` or `analytics:<minute>`."""
    return f"jb:{{{store}}}:{kind}"


def trim_lease_key(outbox: str) -> str:
    """The lease of the replica that trims the outbox stream `outbox` now."""
    return f"{outbox}:trim"


def group_name(subscription: str) -> str:
    """A subscription's consumer group on every outbox stream."""
    return f"{GROUP_PREFIX}{subscription}"


def subscription_of(group: str) -> str | None:
    """The subscription a consumer group reads for, or None for a group that is not ours."""
    return group[len(GROUP_PREFIX) :] if group.startswith(GROUP_PREFIX) else None


def _sub_key(subscription: str, kind: str) -> str:
    return f"jb:{{sub:{subscription}}}:{kind}"


def retry_key(subscription: str) -> str:
    return _sub_key(subscription, "retry")


def delivery_key(subscription: str, event_id: str) -> str:
    return _sub_key(subscription, f"delivery:{event_id}")


def dead_letters_key(subscription: str) -> str:
    return _sub_key(subscription, "dlq")


def health_key(subscription: str) -> str:
    return _sub_key(subscription, "health")


def attempts_key(subscription: str, event_id: str | None = None) -> str:
    """The attempt log of a subscription, or of one event to it."""
    key = _sub_key(subscription, "attempts")
    return f"{key}:{event_id}" if event_id else key


def heads_key(subscription: str) -> str:
    return _sub_key(subscription, "heads")


def parked_key(subscription: str, job: str | None = None) -> str:
    """Every parked event of a subscription (a hash), or one job's (a sorted set)."""
    key = _sub_key(subscription, "parked")
    return f"{key}:{job}" if job else key


def admitted_key(subscription: str) -> str:
    return _sub_key(subscription, "admitted")


def legacy_delivery_key(subscription: str, event_id: str) -> str:
    return f"jb:delivery:{subscription}:{event_id}"


def slack_key(subscription: str, *parts: str) -> str:
    """A Slack subscription's key: `recent`, `digest`, `stats`, ... or a job's message."""
    return ":".join((f"jb:slack:{{{subscription}}}", *parts))


def lease_key(store: str, source: str) -> str:
    """The poll lease of one store's source: "<token> <process id>", with a TTL."""
    return store_key(store, f"lease:{source}")
