"""The progress bar: tasks done out of the total, with resubmissions and failures."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A thin tqdm wrapper that is silent when disabled. ``enabled=None``: on for a terminal."""

    def __init__(self, total: int, enabled: bool | None, description: str, done: int = 0):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar = tqdm(total=total, initial=done, unit="task", desc=description,
                         disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.resubmitted = 0
        self.failed = 0

    def advance(self, tasks: int) -> None:
        self._bar.update(tasks)

    def note_resubmitted(self, chunks: int) -> None:
        self.resubmitted += chunks
        self._show_counts()

    def note_failed(self, tasks: int) -> None:
        self.failed += tasks
        self._show_counts()

    def _show_counts(self) -> None:
        self._bar.set_postfix(resubmitted=self.resubmitted, failed=self.failed)

    def write(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()
