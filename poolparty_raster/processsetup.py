"""multiprocessing.Pool's ``initializer``, ``initargs`` and ``maxtasksperchild`` for a map's
function, with no change to the node program: the function travels wrapped, and the wrapper
runs the initializer once in each process before that process's first task. It also names
the most chunks a worker process may run (``maxtasksperchild``), which the node reads from
the function it loaded."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import cloudpickle

from poolparty_raster.outcome import add_note

# The initializers that ran in this process, by token: the exception of one that failed, or
# None. A process serves one map, whose function it unpickles once; should it be unpickled
# again, the initializer still runs once.
_initialised: dict[str, BaseException | None] = {}


class ProcessSetup:
    """A pool's per-process set-up. Made with the pool: an initializer (or arguments) that
    cannot be pickled fails there, before anything is submitted."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                 maxtasksperchild: int | None):
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasksperchild = maxtasksperchild
        # Derived from what the initializer is, not drawn at random: a resumed map's function
        # must pickle to the same bytes as the first run's (the work_dir's manifest checks it).
        self.token = hashlib.sha256(cloudpickle.dumps((initializer, initargs))).hexdigest()

    def wrap(self, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``func`` as the map sends it: itself when there is nothing to set up."""
        if self.initializer is None and self.maxtasksperchild is None:
            return func
        return SetUpFunction(func, self)

    def run_once(self) -> None:
        """Run the initializer unless it ran in this process. Where it raised, every task of
        this process fails with its exception (the map raises it) instead of trying again."""
        if self.initializer is None:
            return
        if self.token not in _initialised:
            try:
                self.initializer(*self.initargs)
            except BaseException as exc:
                add_note(exc, "poolparty_raster: raised by the pool's initializer")
                _initialised[self.token] = exc
                raise
            _initialised[self.token] = None
        failure = _initialised[self.token]
        if failure is not None:
            raise failure


class SetUpFunction:
    """A map's function, run after its process's set-up."""

    def __init__(self, func: Callable[[Any], Any], setup: ProcessSetup):
        self.func = func
        self.setup = setup

    @property
    def maxtasksperchild(self) -> int | None:
        """The most chunks one worker process runs (read by the node in workers mode)."""
        return self.setup.maxtasksperchild

    def __call__(self, task: Any) -> Any:
        self.setup.run_once()
        return self.func(task)
