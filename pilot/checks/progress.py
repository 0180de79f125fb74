"""How ``pilot bootstrap`` shows its progress: numbered steps, indented notes, a counter rewritten in place.

Plain text through an ``echo(text, nl=True)`` callable, so that the command line can pass ``click.echo``
and the library never imports click.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["Reporter", "write_stream"]


class Reporter:
    """Prints the steps of a long job: ``[3/8] building wheels ...`` then indented notes and the outcome.

    Parameters
    ----------
    total : int
        Number of steps.
    echo : callable
        ``echo(text, nl=True)``; default writes to stdout.
    live : bool
        The output is a terminal: counters may rewrite their line.
    """

    def __init__(self, total: int, echo: Callable[..., None] | None = None, live: bool = False) -> None:
        self.total = total
        self.n = 0
        self.live = live
        self._echo = echo or (lambda text="", nl=True: (sys.stdout.write(text + ("\n" if nl else "")),
                                                        sys.stdout.flush()))
        self.events: list[dict[str, Any]] = []

    def echo(self, text: str = "", nl: bool = True) -> None:
        self._echo(text, nl=nl)

    @contextmanager
    def step(self, title: str) -> Iterator[dict[str, Any]]:
        """One step: prints its title; the body may set ``ev["result"]`` (the closing note)."""
        self.n += 1
        self.echo(f"[{self.n}/{self.total}] {title}")
        ev: dict[str, Any] = {"step": self.n, "title": title, "result": None}
        t0 = time.monotonic()
        try:
            yield ev
        except BaseException:
            ev["failed"] = True
            ev["seconds"] = time.monotonic() - t0
            self.events.append(ev)
            raise
        ev["seconds"] = time.monotonic() - t0
        self.events.append(ev)
        note = ev.get("result") or "done"
        self.echo(f"      {note} ({ev['seconds']:.1f} s)")

    def note(self, text: str) -> None:
        self.echo(f"      {text}")

    def counter(self, text: str) -> None:
        """A progress counter: rewritten in place on a terminal, only the last value elsewhere."""
        if self.live:
            self.echo(f"\r\033[K      {text}", nl=False)


def write_stream(stream: IO[str]) -> Callable[..., None]:
    """An ``echo(text, nl=True)`` for :class:`Reporter` that writes to ``stream``."""
    def echo(text: str = "", nl: bool = True) -> None:
        stream.write(text + ("\n" if nl else ""))
        stream.flush()
    return echo
