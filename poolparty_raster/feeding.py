"""imap's input read lazily: a thread reads it at most one batch ahead, and each batch of tasks
runs as a map of its own (its own MapHandle and work_dir) while the consumer reads the one
before it.

The batch policy (tasks per batch = chunks x chunksize):
- the first batch is FIRST_CHUNKS_PER_SLOT chunks per slot of the pool (``pool.parallelism``,
  or ``max_workers`` in workers mode): every slot is busy from the start with a few chunks
  queued behind it, as multiprocessing's map chunks its input, while the first result comes
  after little input was read;
- each batch is twice the one before, up to MAX_CHUNKS_PER_SLOT chunks per slot: what a map
  costs beyond its chunks (a work_dir, a submission, a poll loop, in workers mode a start of
  every worker) is then paid once per 64 chunks a slot, and what is read ahead stays bounded
  (at most one batch held in memory by the reader, two on disk in flight);
- at most MAX_BATCHES_IN_FLIGHT batches are submitted and not yet read to their end: the next
  one runs while the consumer reads the current one, so the workers do not wait between
  batches, and a consumer that stops reading stops the input being read. A pool that bounds
  its jobs (``num_simultaneously_running_tasks``, or ``max_workers`` in workers mode) has one
  batch in flight: two maps would hold twice the bound;
- a batch is submitted when it is full, when the input ends, or when its first item has
  waited FLUSH_AFTER seconds: a slow input is not held up to fill a batch. This is looked at
  whenever the consumer asks for a result, and while it waits with no batch in flight.

Every MapHandle is made, read and closed in the consumer's thread (a work_dir's driver lock is
held per thread); the reader thread only ever touches the input.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from poolparty_raster.errors import MapTerminated
from poolparty_raster.outcome import ChunkOutcome, add_note

FIRST_CHUNKS_PER_SLOT = 4
MAX_CHUNKS_PER_SLOT = 64
MAX_BATCHES_IN_FLIGHT = 2
FLUSH_AFTER = 0.1     # seconds the first item of a batch may wait for the batch to fill
ABORT_CHECK = 0.25    # seconds between looks at the pool's abort while waiting on the input


def batch_size(number: int, parallelism: int, chunksize: int) -> int:
    """Tasks in batch ``number`` (0, 1, ...)."""
    chunks_per_slot = min(FIRST_CHUNKS_PER_SLOT << min(number, 32), MAX_CHUNKS_PER_SLOT)
    return chunks_per_slot * max(1, parallelism) * chunksize


def one_map_limit(parallelism: int, chunksize: int) -> int:
    """The most tasks of a sequence that run as one map: no more than the largest batch."""
    return MAX_CHUNKS_PER_SLOT * max(1, parallelism) * chunksize


def values_of(outcomes: Iterator[ChunkOutcome], first_index: int = 0) -> Iterator[Any]:
    """The tasks' values, chunk after chunk; a task's exception is raised at its place.
    ``first_index``: the input index of the map's task 0 (a batch of a lazily read input)."""
    try:
        for outcome in outcomes:
            for offset, value in enumerate(outcome.values):
                error = outcome.errors.get(outcome.first_index + offset)
                if error is not None:
                    raise error
                yield value
    except Exception as exc:
        if first_index:
            add_note(exc, f"poolparty_raster: raised in the batch that starts at input item "
                          f"{first_index} (imap reads an iterator in batches, each a map of "
                          f"its own: task i of that map is input item {first_index} + i)")
        raise
    finally:
        outcomes.close()


class InputReader:
    """A daemon thread that reads the input into a buffer of at most ``limit`` items (the
    batch being filled). It ends at the input's end, at the input's exception (kept in
    ``error``), or when stopped; one blocked inside the input ends once the input returns."""

    def __init__(self, iterator: Iterator[Any], limit: int, chunksize: int = 1):
        self._chunksize = chunksize
        self._cv = threading.Condition()
        self._items: list[Any] = []
        self._first_at = 0.0      # when the oldest buffered item arrived
        self._limit = limit
        self._stopped = False
        self.ended = False
        self.error: BaseException | None = None
        self.taken = 0            # items handed out in batches
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True,
                                        name="poolparty-imap-input")
        self._thread.start()

    def _run(self, iterator: Iterator[Any]) -> None:
        error: BaseException | None = None
        try:
            while True:
                with self._cv:
                    while len(self._items) >= self._limit and not self._stopped:
                        self._cv.wait()
                    if self._stopped:
                        return
                item = next(iterator)  # unlocked: the input may take its time
                with self._cv:
                    if not self._items:
                        self._first_at = time.monotonic()
                    self._items.append(item)
                    self._cv.notify_all()
        except StopIteration:
            pass
        except BaseException as exc:  # the input's own failure: raised at its place
            error = exc
        finally:
            del iterator  # the input is released as soon as it is no longer read
            with self._cv:
                if error is not None:  # as multiprocessing: the chunk it broke in is not run
                    broken = min((self.taken + len(self._items)) % self._chunksize,
                                 len(self._items))
                    del self._items[len(self._items) - broken:]
                self.ended, self.error = True, error
                self._cv.notify_all()

    def _ready(self, target: int, now: float) -> bool:
        count = len(self._items)
        return count >= target or (count > 0 and (self.ended or now - self._first_at >= FLUSH_AFTER))

    def exhausted(self) -> bool:
        with self._cv:
            return self.ended and not self._items

    def take(self, target: int, next_limit: int) -> list[Any] | None:
        """The next batch, if one is ready (full, the input ended, or its first item waited
        FLUSH_AFTER); the reader then reads on up to ``next_limit`` items."""
        with self._cv:
            now = time.monotonic()
            if not self._ready(target, now):
                return None
            batch, self._items = self._items[:target], self._items[target:]
            self._first_at = now
            self.taken += len(batch)
            self._limit = next_limit
            self._cv.notify_all()
            return batch

    def wait(self, target: int, timeout: float) -> None:
        """Until a batch is ready, the input ended, or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                now = time.monotonic()
                if self.ended or self._ready(target, now) or now >= deadline:
                    return
                wake = min(deadline, self._first_at + FLUSH_AFTER) if self._items else deadline
                self._cv.wait(max(0.0, wake - now))

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._items = []
            self._cv.notify_all()


class _Batch:
    """A map of consecutive input items in flight, or one that could not be made (``handle``
    None: LazyResults raises why at its place)."""

    def __init__(self, first: int, values: Iterator[Any] | None, handle: Any):
        self.first, self.values, self.handle = first, values, handle


class _InFlight:
    """What the finalizer of a LazyResults needs (never the LazyResults itself): the reader
    to stop and the batches to cancel."""

    def __init__(self, reader: InputReader):
        self.reader = reader
        self.batches: deque[_Batch] = deque()

    def abandon(self) -> None:
        self.reader.stop()
        while self.batches:
            batch = self.batches.popleft()
            if batch.handle is not None:
                batch.handle.abandon()


class LazyResults:
    """What imap and imap_unordered return for an iterator (or a long sequence): the results
    of its batches, in input order (``ordered``) or each batch's in the order they finish.
    Dropped or closed before its end, it stops reading the input and cancels the jobs of
    every batch in flight (their work_dirs are kept)."""

    def __init__(self, start_batch: Callable[[list[Any]], Any], iterator: Iterator[Any],
                 parallelism: int, chunksize: int, ordered: bool, abort: threading.Event,
                 in_flight: int = MAX_BATCHES_IN_FLIGHT):
        self._start_batch = start_batch
        self._in_flight = in_flight
        self._ordered = ordered
        self._abort = abort
        self._size = lambda number: batch_size(number, parallelism, chunksize)
        self._made = 0        # batches made so far
        # Why a batch could not be made (nothing after it is submitted). Kept here, not with
        # the batch: its traceback holds our frames, so this object; held by the finalizer
        # (which holds the batches) it would never be collected, here it is a mere cycle.
        self._failure: Exception | None = None
        self._done = False
        self._state = _InFlight(InputReader(iterator, self._size(0), chunksize))
        self._finalizer = weakref.finalize(self, self._state.abandon)
        try:
            # Submitted now, as a single map is, if the input gives a batch soon enough.
            self._state.reader.wait(self._size(0), FLUSH_AFTER)
            self._top_up()
            batches = self._state.batches
            if batches and batches[0].values is None:  # nothing comes before it: raised now
                assert self._failure is not None
                raise self._failure
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> LazyResults:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            return self._next()
        except BaseException:  # the end, an error, Ctrl-C: nothing may keep running
            self.close()
            raise

    def abandon(self) -> None:
        """Stop reading the input and cancel every batch in flight (the pool was terminated)."""
        self._finalizer()

    def close(self) -> None:
        self._done = True
        for batch in list(self._state.batches):
            if batch.values is not None:
                batch.values.close()  # here, in the thread that made the batch: ends its run
        self._finalizer()

    def _next(self) -> Any:
        state = self._state
        while True:
            self._top_up()
            if state.batches:
                batch = state.batches[0]
                if batch.values is None:
                    assert self._failure is not None
                    raise self._failure
                try:
                    return next(batch.values)
                except StopIteration:
                    state.batches.popleft()  # its map is closed: its work_dir gone if clean
                    continue
            reader = state.reader
            if reader.exhausted():
                if reader.error is not None:
                    add_note(reader.error, f"poolparty_raster: raised by the input iterable "
                                           f"at item {reader.taken}")
                    raise reader.error
                raise StopIteration
            reader.wait(self._size(self._made), ABORT_CHECK)
            self._check_abort()

    def _top_up(self) -> None:
        """Submit the next batches while fewer than ``in_flight`` are in flight and the input
        has one ready. Never waits for the input."""
        state = self._state
        while len(state.batches) < self._in_flight and self._failure is None:
            first = state.reader.taken
            items = state.reader.take(self._size(self._made), self._size(self._made + 1))
            if items is None:
                return
            self._made += 1
            self._check_abort()
            state.batches.append(self._make_batch(first, items))

    def _make_batch(self, first: int, items: list[Any]) -> _Batch:
        try:
            handle = self._start_batch(items)
        except Exception as exc:  # an unpicklable item, a refused submission: at its place
            self._failure = exc
            self._state.reader.stop()
            add_note(exc, f"poolparty_raster: raised while submitting input items {first}-"
                          f"{first + len(items) - 1}")
            return _Batch(first, None, None)
        outcomes = handle.ordered() if self._ordered else handle.completed()
        return _Batch(first, values_of(outcomes, first), handle)

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise MapTerminated("the pool was terminated")
