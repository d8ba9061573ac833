"""Baseline progress of every poller, for whoever shows it.

The command line draws one bar per store and source from these reports (bridge.cli.display);
with nobody listening, the poller logs its progress instead.
"""

from __future__ import annotations

from collections.abc import Callable

# (name "<store>/<source>", jobs seen, jobs the API counts or None, finished)
Listener = Callable[[str, int, int | None, bool], None]

_listeners: list[Listener] = []


def listen(listener: Listener) -> Callable[[], None]:
    """Send every report to `listener` from now on; call the result to stop."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def report(name: str, done: int, total: int | None, *, finished: bool = False) -> bool:
    """Tell every listener; False when nobody listens."""
    for listener in list(_listeners):
        listener(name, done, total, finished)
    return bool(_listeners)
