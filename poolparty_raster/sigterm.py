"""SIGTERM or SIGHUP during a map: the map's jobs are cancelled before the driver exits."""
from __future__ import annotations

import signal
import threading
from typing import Any

# SIGTERM: ``kill``, a scheduler ending the driver's own job. SIGHUP: the terminal or the ssh
# session the driver runs in is gone (under ``nohup`` it is ignored, and stays so).
SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class SigtermGuard:
    """While maps run in the main thread, SIGTERM and SIGHUP raise SystemExit, so that the
    maps' jobs are cancelled before the driver exits. The first map to start installs the
    handler, the last to end restores the default; a handler the program installed itself (or
    an ignored signal: ``nohup``) is left alone, for each signal on its own."""

    def __init__(self) -> None:
        self._maps = 0
        self._lock = threading.Lock()

    def hold(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        with self._lock:
            if self._maps == 0:
                for signum in SIGNALS:
                    # ours may still be installed: a last release ran outside the main thread
                    if signal.getsignal(signum) in (signal.SIG_DFL, _exit_on_signal):
                        signal.signal(signum, _exit_on_signal)
            self._maps += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._maps -= 1
            if self._maps == 0 and threading.current_thread() is threading.main_thread():
                for signum in SIGNALS:
                    if signal.getsignal(signum) is _exit_on_signal:  # not one set meanwhile
                        signal.signal(signum, signal.SIG_DFL)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


SIGTERM_GUARD = SigtermGuard()
