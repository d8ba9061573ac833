"""What the command line draws in a terminal: tables, and a bar per store while baselines run.

Only for a terminal: piped or redirected, every command keeps its plain, stable lines.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from bridge import progress
from bridge.status import StatusView, when


def to_terminal() -> bool:
    return sys.stdout.isatty()


def show(*tables: Table, console: Console | None = None) -> None:
    console = console or Console()
    for table in tables:
        console.print(table)


def status_tables(view: StatusView, origins: dict[str, str]) -> list[Table]:
    """`jobs-bridge status`: the stores' pollers and outboxes, then the subscriptions."""
    pollers = Table(
        "store", "source", "baseline", "last poll", "open jobs", "known jobs", title="pollers"
    )
    outboxes = Table("store", "events kept", "not yet dispatched", "in delivery", title="outboxes")
    for store in view.stores:
        for source, found in store.sources.items():
            pollers.add_row(
                store.name,
                source,
                "done" if found["baseline_done"] else "[red]NOT DONE[/]",
                when(found["last_poll_at"]),
                str(found["open_jobs"]),
                str(found["known_jobs"]),
            )
        outboxes.add_row(
            store.name,
            str(store.outbox["length"]),
            str(store.outbox["lag"]),
            str(store.outbox["pending"] or 0),
        )
    return [pollers, outboxes, subscriptions_table(view, origins)]


def subscriptions_table(view: StatusView, origins: dict[str, str]) -> Table:
    """Each subscription: where it comes from, enabled or why not, last success and failure."""
    table = Table(
        "name", "origin", "type", "state", "last ok", "last failure", "retrying", "dead",
        title="subscriptions",
    )  # fmt: skip
    table.add_column("last error", overflow="fold")
    for sub, found in view.subscriptions:
        if not sub.enabled:
            state = "[yellow]off in config[/]"
        elif found["enabled"]:
            state = "[green]enabled[/]"
        else:
            state = f"[red]DISABLED[/] ({found['disabled_reason']})"
        table.add_row(
            sub.name,
            origins.get(sub.name, ""),
            sub.type,
            state,
            when(found["last_success_at"]),
            when(found["last_failure_at"]),
            str(found["retrying"]),
            str(found["dead_letters"]),
            found["last_error"] or "",
        )
    return table


def dead_letters_table(letters: Sequence[Any]) -> Table:
    table = Table("id", "failed at", "subscription", "type", "event id", "attempts")
    table.add_column("reason", overflow="fold")
    for letter in letters:
        table.add_row(
            letter.entry_id,
            letter.failed_at,
            letter.subscription,
            letter.event["type"],
            letter.event_id,
            str(letter.attempts),
            letter.reason,
        )
    return table


class BaselineBars:
    """A progress listener: one bar per store and source whose baseline is running, all shown
    at once on stderr; gone from the screen's bottom when the last one finished.

    While the bars show, rich routes what is written to stdout and stderr above them; `relog`
    points the logger at those streams (and back once the bars are gone).
    """

    def __init__(self, relog: Callable[[], None], console: Console | None = None) -> None:
        self._relog = relog
        self._console = console
        self._progress: Progress | None = None
        self._bars: dict[str, TaskID] = {}
        self._running: set[str] = set()

    def __call__(self, name: str, done: int, total: int | None, finished: bool) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("baseline {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("jobs"),
                console=self._console or Console(stderr=True),
            )
            self._progress.start()
            self._relog()
        bar = self._bars.get(name)
        if bar is None:
            bar = self._bars[name] = self._progress.add_task(name, total=total)
        self._progress.update(bar, completed=done, total=done if finished else total)
        if finished:
            self._running.discard(name)
        else:
            self._running.add(name)
        if not self._running:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._bars.clear()
            self._relog()


@contextlib.contextmanager
def baseline_bars(relog: Callable[[], None]) -> Iterator[None]:
    """Bars for every baseline that runs meanwhile, when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    bars = BaselineBars(relog)
    unlisten = progress.listen(bars)
    try:
        yield
    finally:
        unlisten()
        bars.close()
