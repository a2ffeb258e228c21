"""The AsyncResult of map_async, starmap_async and apply_async, and the thread that completes
them, as in multiprocessing: callbacks run one at a time, in one result-handler thread per
pool, so a callback may append to a list without a lock."""
from __future__ import annotations

import multiprocessing
import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any


class AsyncResult:
    """A result that a background thread fills in; ``get`` returns it or raises its error.
    It is ready once its callback has run."""

    def __init__(self, callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None):
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self, method: Callable[..., Any], args: tuple[Any, ...],
            handler: ResultHandler) -> None:
        """Run the map (in a thread of its own), then hand its outcome to the pool's handler."""
        try:
            value = method(*args)
        except BaseException as exc:
            handler.deliver(self, None, exc)
        else:
            handler.deliver(self, value, None)

    def _set(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error = value, error
        try:
            if error is None and self._callback is not None:
                self._callback(value)
            elif error is not None and self._error_callback is not None:
                self._error_callback(error)
        except Exception:  # the user's callback: said, and the result is still delivered
            traceback.print_exc()
        finally:
            self._event.set()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


class ResultHandler:
    """A pool's result-handler thread: completes its async results, running their callbacks
    one at a time, in the order their maps ended. Started with the first async call."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[AsyncResult, Any, BaseException | None] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def deliver(self, result: AsyncResult, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="poolparty-result-handler")
                self._thread.start()
        self._queue.put((result, value, error))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            result, value, error = item
            result._set(value, error)

    def stop(self) -> None:
        """Run the callbacks delivered so far and end the thread (the pool's async maps have
        ended). From a callback, which runs in the thread, it only asks the thread to end."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            if thread is not threading.current_thread():
                thread.join()
