"""The multiprocessing.Pool-compatible front shared by every pool of this package."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from multiprocessing.pool import CLOSE, RUN, TERMINATE
from typing import TYPE_CHECKING, Any, ClassVar

import cloudpickle

from poolparty_raster.asyncresult import AsyncResult, ResultHandler
from poolparty_raster.codesource import WithSource
from poolparty_raster.feeding import (MAX_BATCHES_IN_FLIGHT, LazyResults, one_map_limit,
                                      values_of)
from poolparty_raster.mapping import MapHandle, default_work_dir_root, materialise
from poolparty_raster.outcome import ChunkOutcome
from poolparty_raster.pools.options import check_names, help_text, pool_options
from poolparty_raster.pools.options import signature as options_signature
from poolparty_raster.processsetup import ProcessSetup
from poolparty_raster.schedulers.base import Scheduler
from poolparty_raster.attempts import check_retry_resources
from poolparty_raster.settings import MapSettings

if TYPE_CHECKING:
    from poolparty_raster.executor import PoolExecutor


class StarCall:
    """``func(*args)`` as a one-argument callable, for starmap."""

    def __init__(self, func: Callable[..., Any]):
        self.func = func

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.func(*args)


class ApplyCall:
    """``func(*args, **kwds)`` as a one-argument callable whose argument is ignored, for apply."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwds: dict[str, Any]):
        self.func, self.args, self.kwds = func, args, kwds

    def __call__(self, _: Any) -> Any:
        return self.func(*self.args, **self.kwds)


def _constructor(cls: type[Pool]) -> Callable[..., None]:
    """The ``__init__`` of a backend's pool class: its signature and help list the options of
    its scheduler and of every pool (pools/options.py reads them where they are declared)."""
    options = pool_options(cls._scheduler_class, cls._fixed_options, cls._positional_options)
    signature = options_signature(options)

    def __init__(self: Pool, *args: Any, **kwargs: Any) -> None:
        check_names(cls.__name__, kwargs, options)
        given = signature.bind(self, *args, **kwargs).arguments
        own = {k: v for k, v in given.items() if k in options and options[k].scheduler}
        settings = {k: v for k, v in given.items() if k in options and not options[k].scheduler}
        scheduler = cls._scheduler_class(**cls._fixed_options, **own)
        Pool.__init__(self, scheduler, MapSettings(**settings))

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = help_text(cls.__name__, options)
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    return __init__


class Pool:
    """A pool whose tasks run as jobs of a scheduler, through a work_dir: multiprocessing.Pool's
    methods, the same semantics. Not made directly: make one of the backends' pools, whose
    options are their scheduler's and those of every pool (:class:`MapSettings`)."""

    _shared_filesystem = True
    # Clusters: a job per chunk, so that no allocation holds a node while others queue.
    _default_mode = "array"

    # A backend's pool class names its Scheduler class, whose keywords are its options, and
    # the keywords it fixes itself (SlurmPool's array=False); its constructor is built from them.
    _scheduler_class: ClassVar[type[Scheduler] | None] = None
    _fixed_options: ClassVar[dict[str, Any]] = {}
    # Options its constructor also takes by position, in this order (LocalPool's are
    # multiprocessing.Pool's); the others are keywords only.
    _positional_options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._scheduler_class is not None and "__init__" not in cls.__dict__:
            # setattr, not an assignment: an editor reading this source would take the built
            # function's (*args, **kwargs) for every pool's signature (ci/make_stubs.py).
            setattr(cls, "__init__", _constructor(cls))

    def __init__(self, scheduler: Scheduler | None, settings: MapSettings):
        settings = dataclasses.replace(
            settings, mode=settings.mode or self._default_mode,
            python_path=settings.python_path or sys.executable,
            work_dir_root=settings.work_dir_root or default_work_dir_root(self._shared_filesystem))
        self._scheduler = scheduler
        check_retry_resources(settings.retry_resources, scheduler)
        self._abort = threading.Event()
        if scheduler is not None:  # SerialPool has none
            scheduler.check_job_name(settings.job_name)
            scheduler.abort = self._abort  # terminate() cuts a backend's retry waits short
            if settings.filesystem_lag is not None:
                scheduler.filesystem_lag = settings.filesystem_lag
        self._settings = settings
        # Fails here for an initializer that cannot be pickled, before anything is submitted.
        self._process_setup = ProcessSetup(settings.initializer, settings.initargs,
                                           settings.maxtasksperchild)
        # RUN, CLOSE or TERMINATE: multiprocessing.Pool's attribute and values, which code
        # written for it (and CPython's Pool tests) may read.
        self._state = RUN
        self._async_threads: list[threading.Thread] = []
        self._result_handler = ResultHandler()
        # imap results not read to their end: terminate() cancels their maps, which would
        # otherwise run on until their iterator is read or dropped.
        self._iterators: weakref.WeakSet[ResultIterator | LazyResults] = weakref.WeakSet()

    @classmethod
    def from_profile(cls, name: str | None = None, **overrides: Any) -> Pool:
        """The pool the profile ``name`` of the profiles file describes (default: the one
        ``$POOLPARTY_RASTER_PROFILE`` names; see docs/profiles.md); ``overrides`` (options of
        its pool class) win over the profile's values. Called on a backend's class
        (``PbsPool.from_profile``), the profile must make that class."""
        # Imported here: profiles.py imports the pools' modules, which import this one.
        from poolparty_raster.profiles import ProfileError, load_profile
        profile = load_profile(name)
        if not issubclass(profile.pool_class, cls):
            raise ProfileError(f"{profile.path}: profile {profile.name!r} makes a "
                               f"{profile.pool_class.__name__}, not a {cls.__name__}")
        return profile.make_pool(**overrides)

    def executor(self, **options: Any) -> PoolExecutor:
        """A ``concurrent.futures.Executor`` on this pool: calls submitted together run as one
        map. Options as for :class:`~poolparty_raster.PoolExecutor` (``linger``, seconds;
        ``chunksize``)."""
        from poolparty_raster.executor import PoolExecutor
        return PoolExecutor(self, **options)

    @property
    def parallelism(self) -> int:
        """How many chunks this pool runs at once: the throttle, else the scheduler's own
        figure (LocalPool's workers, the cluster's CPUs), which is what chunk sizes follow."""
        return self._settings.throttle or self._scheduler.default_parallelism()

    @property
    def mode(self) -> str:
        """"array" (a job per chunk) or "workers" (long-lived jobs that claim chunks)."""
        return self._settings.mode

    @property
    def max_workers(self) -> int | None:
        """The most worker jobs at once in workers mode (None: the parallelism)."""
        return self._settings.max_workers

    @property
    def work_dir_parent(self) -> str:
        """The directory this pool's work_dirs are made in: on a filesystem the jobs share
        for a cluster pool."""
        work_dir = self._settings.work_dir
        return os.path.dirname(os.path.abspath(work_dir)) if work_dir else self._settings.work_dir_root

    def worker_path(self, path: str) -> str:
        """``path`` on the driver as this pool's jobs see it: itself, unless a container pool
        mounts it elsewhere (``path_mapping``)."""
        return self._scheduler.worker_path(path)

    # -- life cycle --------------------------------------------------------------------
    def close(self) -> None:
        """No new work; maps already started run to their end."""
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop at once: cancel the jobs of every running map (their work_dirs are kept)."""
        self._state = TERMINATE
        self._abort.set()
        for iterator in list(self._iterators):
            iterator.abandon()
        self.join()

    def join(self) -> None:
        """Wait for the maps started with the ``*_async`` methods; the pool must be closed or
        terminated first (ValueError otherwise, as multiprocessing's)."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        for thread in list(self._async_threads):
            thread.join()
        self._result_handler.stop()  # once their callbacks have run

    def __enter__(self) -> Pool:
        self._check_running()  # as multiprocessing's (bpo-35477): a closed pool runs nothing
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def __del__(self, _warn: Callable[..., Any] = warnings.warn, _running: str = RUN) -> None:
        # Defaults bound at definition: at interpreter exit, module globals may be gone.
        if getattr(self, "_state", None) == _running:  # as multiprocessing's, same words
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                  source=self)

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _start(self, func: Callable[[Any], Any], iterable: Iterable[Any],
               chunksize: int | None) -> MapHandle | None:
        self._check_running()
        self._scheduler.check_available()
        tasks = materialise(iterable)
        if len(tasks) == 0:
            return None
        handle = MapHandle(self._scheduler, self._settings, self._sent(func), tasks, chunksize,
                           self._abort)
        handle.start()  # submitted now, whenever the caller starts reading results
        return handle

    def _sent(self, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The map's function as the workers get it: run after their process's set-up
        (initializer), its tracebacks naming its file and lines (codesource.py)."""
        return WithSource(self._process_setup.wrap(func))

    def _start_batch(self, func: Callable[[Any], Any], chunksize: int,
                     tasks: list[Any]) -> MapHandle:
        """One batch of a lazily read imap: a map of its own, in a new work_dir (``func`` is
        as ``_sent`` made it already)."""
        handle = MapHandle(self._scheduler, self._settings, func, tasks, chunksize, self._abort)
        handle.start()
        return handle

    def _imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None,
              ordered: bool, method: str) -> Iterator[Any]:
        self._check_running()
        # A collection (its length known, its items in memory already) runs as one map when
        # a work_dir was given, which holds one map, or when it is no longer than a batch.
        sized = isinstance(iterable, Sized) and not isinstance(iterable, Iterator)
        one_map = self._scheduler is None or (  # SerialPool: nothing is submitted anyway
            sized and (self._settings.work_dir is not None
                       or len(iterable) <= one_map_limit(self._slots(), chunksize or 1)))
        if one_map:
            handle = self._start(func, iterable, chunksize)
            if handle is None:
                return iter(())
            return self._watched(ResultIterator(
                handle, handle.ordered() if ordered else handle.completed()))
        if self._settings.work_dir is not None:
            raise ValueError(
                f"{method} reads an iterator lazily, in batches that are maps of their own "
                f"work_dirs, and this pool's work_dir={self._settings.work_dir!r} holds one map. "
                f"Pass a list (list(iterable)) to run it as one map that this work_dir can "
                f"resume, or make the pool without work_dir.")
        chunksize = 1 if chunksize is None else chunksize
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        self._scheduler.check_available()
        func = self._sent(func)
        cloudpickle.dumps(func)  # an unpicklable function fails here, before anything is read
        # Two batches in flight are two maps, each held to the pool's bounds: twice the bound.
        bounded = self._settings.throttle is not None or (
            self.mode == "workers" and self.max_workers is not None)
        return self._watched(LazyResults(
            functools.partial(self._start_batch, func, chunksize), iter(iterable),
            self._slots(), chunksize, ordered, self._abort,
            in_flight=1 if bounded else MAX_BATCHES_IN_FLIGHT))

    def _watched(self, iterator: ResultIterator | LazyResults) -> ResultIterator | LazyResults:
        self._iterators.add(iterator)
        return iterator

    def _slots(self) -> int:
        """How many chunks run at once, which imap's batch sizes follow: the workers in
        workers mode (max_workers, else the parallelism), else the parallelism."""
        if self.mode == "workers" and self.max_workers:
            return self.max_workers
        return self.parallelism

    # -- the multiprocessing.Pool API --------------------------------------------------
    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[Any]:
        """Like ``list(map(func, iterable))``. A task's exception is re-raised (the first by
        input index) once every task has run, also when other tasks died (a note names them);
        the other results stay in the kept work_dir."""
        handle = self._start(func, iterable, chunksize)
        if handle is None:
            return []
        results: list[Any] = []
        first_error: tuple[int, BaseException] | None = None
        try:
            for outcome in handle.ordered():
                results.extend(outcome.values)
                for index, exc in outcome.errors.items():
                    if first_error is None or index < first_error[0]:
                        first_error = (index, exc)
        except BaseException:  # also a Ctrl-C before the first result was asked for
            handle.abandon()
            raise
        if first_error is not None:
            raise first_error[1]
        return results

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        """Like ``map``, with each item unpacked as the arguments: ``func(*item)``."""
        return self.map(StarCall(func), iterable, chunksize)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int = 1) -> Iterator[Any]:
        """Results in input order as they become available; a task's exception is raised at its
        place in the sequence (what is still running is then cancelled).

        The input is read lazily, as multiprocessing's imap reads it (by a thread, here at
        most one batch ahead), so an endless or slow iterator works: each batch of tasks runs
        as a map of its own, in a work_dir of its own, starting at 4 chunks of ``chunksize``
        tasks per slot of the pool (``pool.parallelism``; ``max_workers`` in workers mode if
        given) and doubling up to 64 per slot. The next batch runs while you read the current
        one; no more than two are in flight (one where ``num_simultaneously_running_tasks``,
        or ``max_workers`` in workers mode, bounds the jobs: two maps would hold twice that),
        so a consumer that stops reading stops the input being read. A batch is submitted
        when it is full, when the input ends, or once its first item has waited 0.1 s. An
        exception raised by the input iterator itself is raised at its place, after the
        results of the chunks before the one it broke in (as multiprocessing's). Dropping or
        closing the iterator before its end cancels the jobs of every batch in flight.

        A collection with a length (a list, tuple, range, array, ...) runs as one map, as with
        ``map``, when it holds at most 64 chunks per slot, and whatever its length when the
        pool was given a ``work_dir``: one work_dir holds one map, which is what makes it
        resumable. An iterator (a generator, a file, ...) cannot be given with a
        ``work_dir``: that raises ValueError; pass ``list(iterable)`` to run it as one map that
        the work_dir can resume."""
        return self._imap(func, iterable, chunksize, ordered=True, method="imap")

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> Iterator[Any]:
        """As ``imap`` (the same lazy reading, batches and ``work_dir`` rule), but each
        batch's results come in the order its chunks finish; batches come one after another.
        An exception of the input iterator is raised once every result before it came."""
        return self._imap(func, iterable, chunksize, ordered=False, method="imap_unordered")

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` run as a one-task map; its value, or its exception raised."""
        return self.map(ApplyCall(func, tuple(args), dict(kwds or {})), [None], 1)[0]

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  chunksize: int | None = None, callback: Callable[[Any], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``map`` in the background: an AsyncResult whose ``get(timeout)`` returns the list.
        ``callback`` gets the list, ``error_callback`` the exception, as multiprocessing's."""
        return self._async(self.map, (func, iterable, chunksize), callback, error_callback)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None, callback: Callable[[Any], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``starmap`` in the background, as ``map_async``."""
        return self._async(self.starmap, (func, iterable, chunksize), callback, error_callback)

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
                    kwds: dict[str, Any] | None = None, callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``apply`` in the background: an AsyncResult whose ``get(timeout)`` returns the
        value; ``callback`` gets the value, ``error_callback`` the exception."""
        return self._async(self.apply, (func, args, kwds), callback, error_callback)

    def _async(self, method: Callable[..., Any], args: tuple[Any, ...],
               callback: Callable[[Any], Any] | None,
               error_callback: Callable[[BaseException], Any] | None) -> AsyncResult:
        self._check_running()
        result = AsyncResult(callback, error_callback)
        thread = threading.Thread(target=result.run, args=(method, args, self._result_handler),
                                  daemon=True, name="poolparty-async")
        self._async_threads.append(thread)
        thread.start()
        return result


class ResultIterator:
    """What imap and imap_unordered return when the input runs as one map (a short sequence,
    or any with a work_dir; see feeding.LazyResults for the others): the map is already
    submitted. Dropped before its end, it cancels the map's jobs (their work_dir is kept), so
    nothing runs on unread."""

    def __init__(self, handle: MapHandle, outcomes: Iterator[ChunkOutcome]):
        self._values = values_of(outcomes)
        self._finalizer = weakref.finalize(self, handle.abandon)

    def __iter__(self) -> ResultIterator:
        return self

    def __next__(self) -> Any:
        return next(self._values)

    def close(self) -> None:
        self._values.close()
        self._finalizer()

    def abandon(self) -> None:
        """Cancel the map's jobs (the pool was terminated): a later ``next`` raises
        MapTerminated."""
        self._finalizer()
