"""A map's progress where its driver runs: a bar in a terminal or a notebook, summary lines in
a log.

In a terminal, and in Jupyter (``tqdm.auto`` picks its widget there), a bar labelled with the
mapped function's name shows tasks done, the scheduler's queued and running counts (from the
polls the run makes anyway) and, while nothing runs, why the scheduler holds the jobs back.
Where stderr is neither (a driver running as a batch job, under ``nohup``, piped to a file), a
redrawn bar would fill the log with carriage returns: one summary line is written at most once
a minute instead, and one at the end.
"""
from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm as auto_tqdm

from poolparty_raster.schedulers.base import TaskState, TaskStatus

SUMMARY_EVERY = 60.0  # seconds between two summary lines in a log
# Reasons that say nothing: SLURM's "None" is a job not yet looked at by its scheduler loop.
EMPTY_REASONS = {"", "None"}


def function_label(func: Callable[..., Any]) -> str:
    """The name a person knows a mapped function by. The wrappers this package puts around
    it (starmap's, apply's, the initializer's, the traceback's) and ``functools.partial``
    keep it as ``.func``; they are looked through, a user's own callable object is not. The
    executor's batch of several functions carries its ``label``."""
    while not hasattr(func, "__code__") and hasattr(func, "func") and (
            isinstance(func, functools.partial)
            or type(func).__module__.startswith("poolparty_raster")):
        func = func.func
    kind = type(func)
    label = getattr(func, "label", None)
    if kind.__module__.startswith("poolparty_raster") and isinstance(label, str):
        return label
    return getattr(func, "__qualname__", None) or kind.__qualname__


def in_notebook() -> bool:
    """Whether ``tqdm.auto`` chose its notebook widget (a Jupyter kernel with ipywidgets)."""
    return any(cls.__module__ == "tqdm.notebook" for cls in auto_tqdm.__mro__)


class Progress:
    """A map's progress, shown as ``enabled`` says: True, a bar (also into a log); False,
    nothing; None (the default), a bar in a terminal or a notebook, else summary lines.

    ``total`` and ``done`` count tasks; ``stream`` is where it goes (default: ``sys.stderr``
    as it is at construction); ``clock`` gives seconds (monotonic) and spaces the summary
    lines."""

    def __init__(self, total: int, enabled: bool | None, description: str, done: int = 0, *,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self.total, self.done, self.description = total, done, description
        self.resubmitted = 0
        self.failed = 0
        self.queued = 0
        self.running = 0
        self.members = "chunks"
        self.pending_reason = ""
        self._started = self._last_line = clock()
        self._closed = False
        if enabled is None:
            isatty = getattr(self._stream, "isatty", None)  # a replaced stderr may have none
            enabled = bool(isatty and isatty()) or in_notebook()
            self._lines = not enabled
        else:
            self._lines = False
        self._bar = auto_tqdm(total=total, initial=done, unit="task", desc=description,
                              disable=not enabled, file=self._stream, dynamic_ncols=True)

    # -- what the run tells it ----------------------------------------------------------
    def advance(self, tasks: int) -> None:
        """``tasks`` more finished (fewer, when negative: an output that could not be read)."""
        self.done += tasks
        self._bar.update(tasks)
        self._line_if_due()

    def note_resubmitted(self, chunks: int) -> None:
        self.resubmitted += chunks
        self._show_counts()

    def note_failed(self, tasks: int) -> None:
        self.failed += tasks
        self._show_counts()

    def note_queue(self, statuses: Iterable[TaskStatus], members: str) -> None:
        """A poll's states of the map's ``members`` still to finish: how many are queued and
        running, and (shown while none runs) the reason most of the queued ones wait for."""
        states = list(statuses)
        self.members = members
        self.queued = sum(s.state is TaskState.PENDING for s in states)
        self.running = sum(s.state is TaskState.RUNNING for s in states)
        reasons = Counter(s.reason for s in states
                          if s.state is TaskState.PENDING and s.reason not in EMPTY_REASONS)
        self.pending_reason = reasons.most_common(1)[0][0] if reasons else ""
        self._show_counts()

    def write(self, message: str) -> None:
        """A line of its own, above the bar."""
        if self._bar.disable:
            print(message, file=self._stream, flush=True)
        else:
            self._bar.write(message, file=self._stream)

    def close(self) -> None:
        """The map ended (or failed): the bar is closed, the log gets its last line."""
        if self._closed:
            return
        self._closed = True
        self.queued = self.running = 0  # what still ran is cancelled, or ended with the map
        if not self._bar.disable:
            self._bar.set_postfix(self.counts(), refresh=False)  # the bar left shows no stale poll
        self._bar.close()
        if self._lines:
            self._write_line()

    # -- what it shows ----------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        """The figures shown beside the bar, in order; the waiting reason only while nothing
        runs (a map whose jobs run is not waiting)."""
        whose = "" if self.members == "chunks" else f"{self.members} "
        shown: dict[str, Any] = {}
        if self.queued or self.running:  # none before the first poll, and after the end
            shown = {f"{whose}queued": self.queued, f"{whose}running": self.running}
        if self.pending_reason and self.queued and not self.running:
            shown["waiting for"] = self.pending_reason
        if self.resubmitted:
            shown["resubmitted"] = self.resubmitted
        if self.failed:
            shown["failed"] = self.failed
        return shown

    def summary(self) -> str:
        """The one line a log gets: function, tasks done, counts, time since the start."""
        elapsed = int(self._clock() - self._started)
        figures = "".join(f", {name} {value}" for name, value in self.counts().items())
        return (f"poolparty_raster {self.description}: {self.done}/{self.total} tasks done"
                f"{figures}, {elapsed // 60}m{elapsed % 60:02d}s")

    def _show_counts(self) -> None:
        if not self._bar.disable:
            self._bar.set_postfix(self.counts())
        self._line_if_due()

    def _line_if_due(self) -> None:
        # Every task done: the end's line follows at once, when the map closes.
        if (self._lines and not self._closed and self.done < self.total
                and self._clock() - self._last_line >= SUMMARY_EVERY):
            self._write_line()

    def _write_line(self) -> None:
        self._last_line = self._clock()
        print(self.summary(), file=self._stream, flush=True)
