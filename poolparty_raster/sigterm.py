"""SIGTERM during a map: the map's jobs are cancelled before the driver exits."""
from __future__ import annotations

import signal
import threading
from typing import Any


class SigtermGuard:
    """While maps run in the main thread, SIGTERM (``kill``, a scheduler ending the driver's
    own job) raises SystemExit, so that the maps' jobs are cancelled before the driver exits.
    The first map to start installs it, the last to end restores the default; a handler the
    program installed itself is left alone."""

    def __init__(self) -> None:
        self._maps = 0
        self._lock = threading.Lock()

    def hold(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        with self._lock:
            if self._maps == 0:
                # ours may still be installed: a last release ran outside the main thread
                if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _exit_on_term):
                    return False
                signal.signal(signal.SIGTERM, _exit_on_term)
            self._maps += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._maps -= 1
            if self._maps == 0 and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


SIGTERM_GUARD = SigtermGuard()
