"""imap and imap_unordered read their input lazily (issue 21, item 6): an endless or slow
iterator gives its first results at once, the input's own exception is raised at its place,
and the batches the input is fed in keep every result, in order for imap.

Runs on LocalPool in both modes and on the dummy SLURM.
"""
from __future__ import annotations

import itertools
import os
import select
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

import poolparty_raster as pp

cloudpickle.register_pickle_by_value(sys.modules[__name__])

LAZY_BACKENDS = ["local", "local_workers", "dummy_slurm_array"]


def square(x):
    return x * x


class InputBroke(Exception):
    pass


def failing_input(position):
    """0, 1, ... then InputBroke at ``position``."""
    yield from range(position)
    raise InputBroke(f"the input broke at {position}")


def tell_and_block(args):
    """Tasks from 10 on write their pid to a FIFO, then run far longer than the test."""
    x, fifo = args
    if x >= 10:
        with open(fifo, "w") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(300)
    return x * x


class Pools:
    """Pools of one backend of conftest.BACKENDS (with its dummy queue, if it has one)."""

    def __init__(self, name, request):
        # pytest's own copy of tests/conftest.py: `from conftest import` would find
        # tests/applier/conftest.py when both folders are collected
        conftest = request.config.pluginmanager.get_plugin(
            str(Path(__file__).with_name("conftest.py")))
        fixture, self._construct = conftest.BACKENDS[name]
        self.queue = request.getfixturevalue(fixture) if fixture else None
        self.made = []

    def make(self, **options):
        options.setdefault("polling_interval", 0.5)
        options.setdefault("progress", False)
        if self.queue is not None:
            options.setdefault("filesystem_lag", 0.5)
        pool = self._construct(**options)
        self.made.append(pool)
        return pool


@pytest.fixture(params=LAZY_BACKENDS)
def pools(request):
    made = Pools(request.param, request)
    yield made
    for pool in made.made:
        pool.terminate()


def work_dirs(tmp_path):
    root = tmp_path / "work"
    return sorted(root.iterdir()) if root.exists() else []


def slots(pool):
    """What the batch sizes follow: chunks that run at once."""
    return pool.max_workers if pool.mode == "workers" and pool.max_workers else pool.parallelism


def three_batches(pool, chunksize=1):
    """Tasks enough for three batches: 4 chunks a slot, then 8, then some."""
    return (12 * slots(pool) + 5) * chunksize


def test_imap_of_an_endless_input_gives_its_first_results(pools):
    pool = pools.make()
    assert list(itertools.islice(pool.imap(square, itertools.count()), 10)) == [
        x * x for x in range(10)]
    firsts = list(itertools.islice(pool.imap_unordered(square, itertools.count()), 10))
    assert len(set(firsts)) == 10 and all(round(v ** 0.5) ** 2 == v for v in firsts)


@pytest.mark.parametrize("where, chunksize", [("first", 1), ("second batch", 1),
                                              ("second batch", 3)])
def test_imap_raises_an_input_error_at_its_position(pools, where, chunksize):
    pool = pools.make()
    # the second batch starts after 4 chunks a slot: the failure is inside it (mid-chunk
    # when chunksize > 1)
    position = 0 if where == "first" else 4 * slots(pool) * chunksize + chunksize + 1
    results = pool.imap(square, failing_input(position), chunksize)
    got = []
    with pytest.raises(InputBroke, match=f"the input broke at {position}"):
        for value in results:
            got.append(value)
    # As multiprocessing: the results before the chunk the input broke in, then its error.
    assert got == [x * x for x in range(position - position % chunksize)]
    assert list(results) == []  # it ended there


def test_imap_unordered_raises_an_input_error_after_every_result_before_it(pools):
    pool = pools.make()
    position = 4 * slots(pool) + 3
    got = []
    with pytest.raises(InputBroke):
        for value in pool.imap_unordered(square, failing_input(position)):
            got.append(value)
    assert sorted(got) == [x * x for x in range(position)]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_the_first_result_comes_while_a_slow_input_is_still_read(pools, method):
    pool = pools.make()
    released, exhausted = threading.Event(), threading.Event()

    def slow_input():
        yield 1
        if not released.wait(60):  # released once the first result came
            raise AssertionError("imap waited for the rest of the input before its first result")
        yield from (2, 3)
        exhausted.set()

    results = getattr(pool, method)(square, slow_input())
    assert next(results) == 1
    assert not exhausted.is_set()
    released.set()
    assert sorted(results) == [4, 9]


def test_imap_keeps_the_input_order_across_batches(pools, tmp_path):
    pool = pools.make(keep_work_dir=True)
    n = three_batches(pool)
    assert list(pool.imap(square, iter(range(n)))) == [x * x for x in range(n)]
    assert len(work_dirs(tmp_path)) >= 3, "the input was meant to run as three batches"


@pytest.mark.parametrize("chunksize", [1, 2])
def test_imap_unordered_yields_every_result_once(pools, chunksize):
    pool = pools.make()
    n = three_batches(pool, chunksize)
    got = list(pool.imap_unordered(square, (x for x in range(n)), chunksize))
    assert sorted(got) == [x * x for x in range(n)]


def _wait_for_exit(pid, timeout):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux's pidfd_open")
def test_dropping_imap_early_cancels_every_batch_in_flight(pools, tmp_path):
    pool = pools.make()
    fifo = str(tmp_path / "pids")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR)  # never blocks, and never sees an end
    try:
        results = pool.imap(tell_and_block, ((x, fifo) for x in itertools.count()))
        first = list(itertools.islice(results, 10))
        assert first == [x * x for x in range(10)]
        assert select.select([reader], [], [], 60)[0], "no task from 10 on started"
        pid = int(os.read(reader, 4096).decode().split()[0])
        del results
        assert _wait_for_exit(pid, 60), "a task of a dropped imap still runs"
        if pools.queue is not None:  # every batch's jobs, the queued ones too
            assert not [j for j in pools.queue.jobs() if j["state"] in ("PENDING", "RUNNING")]
    finally:
        os.close(reader)


def test_a_range_too_long_to_write_out_is_read_lazily():
    pool = pp.LocalPool(2, progress=False)
    try:
        first = list(itertools.islice(pool.imap(square, range(10**12), chunksize=4), 10))
        assert first == [x * x for x in range(10)]
    finally:
        pool.terminate()


def test_an_iterator_with_a_work_dir_is_refused_and_a_long_list_is_one_map(tmp_path):
    work_dir = tmp_path / "mine"
    pool = pp.LocalPool(2, work_dir=str(work_dir), keep_work_dir=True, progress=False)
    try:
        with pytest.raises(ValueError, match=r"list\(iterable\)"):
            pool.imap(square, iter(range(3)))
        with pytest.raises(ValueError, match=r"list\(iterable\)"):
            pool.imap_unordered(square, (x for x in range(3)))
        n = three_batches(pool)  # longer than a batch: still one map, in the work_dir given
        assert list(pool.imap(square, list(range(n)))) == [x * x for x in range(n)]
        assert work_dir.is_dir() and work_dirs(tmp_path) == []
    finally:
        pool.terminate()


def test_an_item_that_cannot_be_pickled_fails_at_its_batch_after_the_results_before_it(tmp_path):
    pool = pp.LocalPool(2, progress=False)
    try:
        second_batch = 4 * slots(pool)
        items = itertools.chain(range(second_batch + 3), [threading.Lock()], itertools.count())
        got = []
        with pytest.raises(TypeError, match="lock"):
            for value in pool.imap(square, items):
                got.append(value)
        assert got == [x * x for x in range(second_batch)]
    finally:
        pool.terminate()


def timed_square(args):
    """x * x, after 0.2 s of work; records when the task ran (its own clock, this machine's)."""
    x, record_dir = args
    began = time.time()
    time.sleep(0.2)
    with open(os.path.join(record_dir, str(x)), "w") as f:
        f.write(f"{began} {time.time()}")
    return x * x


def _peak(intervals):
    """The most intervals open at once (one that ends as another starts is not counted)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_a_throttled_pool_runs_no_more_than_its_bound_across_batches(dummy_slurm, tmp_path):
    records = tmp_path / "ran"
    records.mkdir()
    pool = pp.SlurmArrayPool(num_simultaneously_running_tasks=2, polling_interval=0.5,
                             filesystem_lag=0.5, progress=False)
    try:
        n = three_batches(pool)
        tasks = ((x, str(records)) for x in range(n))
        assert list(pool.imap(timed_square, tasks)) == [x * x for x in range(n)]
    finally:
        pool.terminate()
    assert len({job["job_id"] for job in dummy_slurm.jobs()}) >= 3, "meant to run as batches"
    ran = [tuple(map(float, (records / name).read_text().split())) for name in os.listdir(records)]
    assert len(ran) == n and _peak(ran) <= 2
