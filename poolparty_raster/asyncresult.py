"""The AsyncResult of map_async, starmap_async and apply_async, as in multiprocessing."""
from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from typing import Any


class AsyncResult:
    """A result that a background thread fills in; ``get`` returns it or raises its error."""

    def __init__(self, callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None):
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self, method: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = method(*args)
        except BaseException as exc:
            self._error = exc
            if self._error_callback is not None:
                self._error_callback(exc)
        else:
            if self._callback is not None:
                self._callback(self._value)
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
