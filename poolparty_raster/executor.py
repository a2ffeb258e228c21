"""``concurrent.futures`` on any pool of this package: :class:`PoolExecutor`.

A cluster job costs a submission, a queue wait and an interpreter start, so a future is never a
job of its own: submissions are collected into batches, and each batch runs as one map of the
pool (one array, or one set of workers) in a thread of its own, which sets each future as the
outcome of its task's chunk is read. A batch is sent as soon as its caller waits on one of its
futures (``result()``, ``exception()``, ``concurrent.futures.wait``, ``as_completed``: a thread
that waits submits nothing more), else once no submission has come for ``linger`` seconds (so
a loop of submit calls becomes one map, also where a busy machine stalls it now and then; a
batch waits at most LINGER_CAP lingers, against an endless stream of submissions), or at the
end of the outermost ``with executor.batch():``, or at ``shutdown``. Until then a future is
pending and can be cancelled; once sent it is running (``Future.running()``), as in the
standard library.

This module is also what the map's tasks import on the nodes (``CallEach``): it imports
nothing of the driver's machinery at module level.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolparty_raster.outcome import ChunkOutcome
    from poolparty_raster.pools.base import Pool

# Seconds without a new submission after which a batch is sent when nobody waits on its
# futures (callbacks, fire and forget): a loop of a thousand submit calls takes a few
# milliseconds with gaps of microseconds, and a map's own start costs more than this on any pool.
LINGER = 0.05
LINGER_CAP = 20  # lingers a batch's first submission waits at most (a steady stream of submits)


class CallEach:
    """``fn(*args, **kwargs)`` for each task ``(fn, args, kwargs)``: a batch of several
    functions' calls. The function travels with each task: a chunk is pickled as one list, so
    a function shared by its tasks is stored once a chunk, and a chunk loads only its own
    tasks' functions. ``label`` names the calls on the progress bar (joblib's batches are
    each a function of their own, all of the user's one)."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, task: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
        fn, args, kwargs = task
        return fn(*args, **kwargs)


class CallWith:
    """``fn(*args, **kwargs)`` for each task ``(args, kwargs)``: a batch of calls of one
    function stores it once, as the map's function."""

    def __init__(self, fn: Callable[..., Any]):
        self.func = fn  # named as the package's other wrappers' (the progress label looks through)

    def __call__(self, task: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = task
        return self.func(*args, **kwargs)


class _WaitersThatSend(list):
    """A future's list of waiters. ``concurrent.futures.wait`` and ``as_completed`` call no
    method of the futures they wait on: each installs a waiter in every future's ``_waiters``
    (CPython's since 3.2), which is the moment to send the batch instead of lingering."""

    def __init__(self, on_wait: Callable[[], None]):
        super().__init__()
        self._on_wait = on_wait

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        self._on_wait()


class _BatchedFuture(Future):
    """A Future that sends its pending batch at once when its caller waits on it: that thread
    submits nothing more while it waits, so the batch need not linger. ``result()`` and
    ``exception()`` send it even inside ``batch()`` (where they would otherwise hang); ``wait``
    and ``as_completed`` send it outside ``batch()``."""

    def __init__(self, send_pending: Callable[[], None], send_unless_held: Callable[[], None]):
        super().__init__()
        self._send_pending = send_pending
        self._waiters = _WaitersThatSend(send_unless_held)

    def result(self, timeout: float | None = None) -> Any:
        self._send_if_pending()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._send_if_pending()
        return super().exception(timeout)

    def _send_if_pending(self) -> None:
        if not (self.running() or self.done()):
            self._send_pending()


class _WorkItem:
    """A submitted call and its future, until its batch is sent."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future: Future, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs

    def task(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return self.fn, self.args, self.kwargs


class PoolExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose calls run as batched maps of ``pool``.

    ``linger``: seconds without a new submission after which a batch nobody waits on is sent
    (default 0.05; a batch's first submission waits at most LINGER_CAP times that).
    ``chunksize``: tasks per chunk (per array element) of the batches' maps; None (default)
    chunks as ``pool.map`` does, four chunks per slot of the pool. A future's result is set
    when its chunk's outcome is read, so one chunk's futures finish together.

    The executor never closes or terminates the pool; give the pool no ``work_dir`` (each
    batch is a map of its own, in a work_dir of its own).
    """

    def __init__(self, pool: Pool, *, linger: float = LINGER, chunksize: int | None = None):
        if linger < 0:
            raise ValueError(f"linger must be >= 0 seconds, not {linger}")
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        self.pool = pool
        self._linger = linger
        self._chunksize = chunksize
        self._cv = threading.Condition(threading.RLock())  # _send_pending nests in it
        self._pending: list[_WorkItem] = []   # submitted, not yet sent
        self._first_pending_at = 0.0          # when the oldest pending submission arrived
        self._last_pending_at = 0.0           # when the newest one did
        self._collector_running = False       # a thread lingers on the pending submissions
        self._holds = 0                       # open ``batch()`` blocks
        self._flush = False                   # send the pending submissions now
        self._shutdown = False
        self._threads: set[threading.Thread] = set()

    # -- submitting ---------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; a Future for its value. It joins the batch being
        collected (sent when a future of it is waited on, else once no submission has come
        for ``linger`` seconds)."""
        future = _BatchedFuture(self._send_pending, self._send_unless_held)
        with self._cv:
            self._check_open()
            self._last_pending_at = time.monotonic()
            if not self._pending:
                self._first_pending_at = self._last_pending_at
            self._pending.append(_WorkItem(future, fn, args, kwargs))
            if not self._collector_running:
                self._collector_running = True
                self._start_thread(self._collect, "poolparty-executor-batch")
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None) -> Iterator[Any]:
        """Like ``map(fn, *iterables)``, the calls sent at once as one map of the pool.

        Results come in input order; a call's exception is raised at its place. ``timeout``
        (seconds, counted from this call) raises TimeoutError when a result is not ready in
        time. ``chunksize``: tasks per chunk (None: the executor's, else the pool's default).
        Closing the iterator early cancels the calls still pending (none, once sent)."""
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        deadline = None if timeout is None else time.monotonic() + timeout
        items = [_WorkItem(Future(), fn, args, {}) for args in zip(*iterables)]
        futures = [item.future for item in items]
        with self._cv:
            self._check_open()
            if items:
                self._start_thread(functools.partial(self._run, items, chunksize or self._chunksize),
                                   "poolparty-executor-map")
        return _results_in_order(futures, deadline)

    @contextlib.contextmanager
    def batch(self) -> Iterator[PoolExecutor]:
        """Hold every submission (of any thread) until the outermost ``batch()`` exits, then
        send them as one map. Waiting on a pending future's ``result()`` sends them at once
        (a future cannot finish unsent); ``wait`` and ``as_completed`` inside wait for the
        block's end (without a timeout, inside the block, they would hang)."""
        with self._cv:
            self._holds += 1
        try:
            yield self
        finally:
            with self._cv:
                self._holds -= 1
                if self._holds == 0:
                    self._send_pending()

    # -- shutting down ------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions (RuntimeError after this). Pending calls are sent now, or
        cancelled with ``cancel_futures``; calls already sent always run to their end.
        ``wait``: return once every sent call has finished."""
        with self._cv:
            self._shutdown = True
            cancelled: list[_WorkItem] = []
            if cancel_futures:
                cancelled, self._pending = self._pending, []
            self._cv.notify_all()
            threads = list(self._threads)
        # Outside the executor's lock: a thread in wait() holds the futures' locks while it
        # asks for the executor's (_send_unless_held); the two are never taken the other way.
        for item in cancelled:
            item.future.cancel()
        if wait:
            for thread in threads:
                thread.join()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        # Ctrl-C (or SystemExit) in the block: nothing more is sent and nothing is waited
        # for; maps already sent end when the pool is terminated (``with pool:`` does).
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.shutdown(wait=not interrupted, cancel_futures=interrupted)
        return False

    # -- inside --------------------------------------------------------------------------
    def _send_pending(self) -> None:
        with self._cv:
            if self._pending:
                self._flush = True
                self._cv.notify_all()

    def _send_unless_held(self) -> None:
        with self._cv:
            if not self._holds:
                self._send_pending()

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        """A thread that the interpreter waits for at exit (not a daemon): a submitted call
        runs to its end, as with the standard library's executors. Called under ``_cv``."""
        def run() -> None:
            try:
                target()
            finally:
                with self._cv:
                    self._threads.discard(threading.current_thread())
        thread = threading.Thread(target=run, name=name)
        self._threads.add(thread)
        thread.start()

    def _ready_to_send(self) -> bool:
        if self._shutdown or self._flush:
            return True
        return self._holds == 0 and time.monotonic() >= self._send_at()

    def _send_at(self) -> float:
        """When the pending batch goes if nothing sends it sooner."""
        return min(self._last_pending_at + self._linger,
                   self._first_pending_at + LINGER_CAP * self._linger)

    def _collect(self) -> None:
        """Linger on the pending submissions, then send them as one map from this thread."""
        with self._cv:
            while not self._ready_to_send():
                wait = None if self._holds else self._send_at() - time.monotonic()
                self._cv.wait(wait)
            items, self._pending = self._pending, []
            self._collector_running = False
            self._flush = False
        self._run(items, self._chunksize)

    def _run(self, items: list[_WorkItem], chunksize: int | None) -> None:
        """Send the calls not cancelled as one map and set each future from its outcome."""
        live = [item for item in items if item.future.set_running_or_notify_cancel()]
        items.clear()
        if live:
            _run_map(self.pool, live, chunksize)


def _run_map(pool: Pool, items: list[_WorkItem], chunksize: int | None) -> None:
    futures: list[Future | None] = [item.future for item in items]
    try:
        # The pool's own map machinery (what pool.map uses): per-task outcomes, with each
        # task's exception and remote traceback, in the order chunks finish.
        handle = pool._start(*_as_map(items), chunksize)
    except BaseException as exc:
        retry = _fail_unpicklable(items)
        if retry is not None:
            _run_map(pool, retry, chunksize)
            return
        _fail_all(futures, exc)
        if not isinstance(exc, Exception):
            raise
        return
    items.clear()  # the calls are in the work_dir now: the driver holds no argument any longer
    try:
        for outcome in handle.completed():
            _settle(futures, outcome)
            del outcome  # no result stays referenced here while the next chunk runs
    except BaseException as exc:  # the map failed (a task lost, the pool terminated)
        # Where tasks both raised and died, the map raises the first raised exception; the
        # futures still unset are the dead tasks', whose error is the TaskLostError.
        _fail_all(futures, handle.run.lost_error or exc)
        if not isinstance(exc, Exception):
            raise


def _as_map(items: list[_WorkItem]) -> tuple[Callable[[Any], Any], list[Any]]:
    """The map's function and tasks for a batch of calls."""
    fn = items[0].fn
    if all(item.fn is fn for item in items):
        return CallWith(fn), [(item.args, item.kwargs) for item in items]
    from poolparty_raster.progress import function_label  # the driver's: tqdm, not the nodes'

    labels = {function_label(item.fn) for item in items}
    label = labels.pop() if len(labels) == 1 else f"{len(labels)} functions"
    return CallEach(label), [item.task() for item in items]


def _settle(futures: list[Future | None], outcome: ChunkOutcome) -> None:
    """Set the futures of one chunk's tasks (and forget them: the caller holds them)."""
    for offset, value in enumerate(outcome.values):
        index = outcome.first_index + offset
        future, futures[index] = futures[index], None
        error = outcome.errors.get(index)
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _fail_unpicklable(items: list[_WorkItem]) -> list[_WorkItem] | None:
    """When a map could not be made, an unpicklable call fails its own future only, as in
    ProcessPoolExecutor: those calls' futures get their pickling error, and the others are
    returned to be sent again. None when every call pickles (the map failed for another
    reason)."""
    import cloudpickle  # not on the nodes' import path of CallEach

    kept: list[_WorkItem] = []
    for item in items:
        try:
            cloudpickle.dumps(item.task())
        except Exception as exc:
            item.future.set_exception(exc)
        else:
            kept.append(item)
    if len(kept) == len(items):
        return None
    return kept or None


def _fail_all(futures: list[Future | None], exc: BaseException) -> None:
    for future in futures:
        if future is not None and not future.done():
            future.set_exception(exc)


def _results_in_order(futures: list[Future], deadline: float | None) -> Iterator[Any]:
    """Each future's result in turn, holding none once yielded; closed early, it cancels the
    futures not yet read (those still pending)."""
    futures.reverse()
    try:
        while futures:
            timeout = None if deadline is None else deadline - time.monotonic()
            yield futures.pop().result(timeout)
    finally:
        for future in futures:
            future.cancel()
