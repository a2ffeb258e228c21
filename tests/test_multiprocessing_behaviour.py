"""What a program written for multiprocessing.Pool relies on beyond CPython's own Pool tests
(test_multiprocessing_compat.py): initializer and maxtasksperchild, the shape of a task's
exception, callbacks in one thread, the ResourceWarning of an unclosed pool."""
from __future__ import annotations

import collections
import gc
import linecache
import multiprocessing.pool
import os
import threading
import time
import warnings

import pytest

import poolparty_raster as pp

pytestmark = pytest.mark.backends(["local", "local_workers", "dummy_slurm_array"])

COUNT = "POOLPARTY_TEST_INITIALISED"  # the initializer's runs in this process, and its argument


def initialise(argument):
    runs = int(os.environ.get(COUNT, "0|").split("|")[0]) + 1
    os.environ[COUNT] = f"{runs}|{argument}"


def failing_initialise():
    raise ConnectionError("no database here")


def report(x):
    return x, os.getpid(), os.environ.get(COUNT)


def test_initializer_runs_once_in_each_process_before_its_first_task(make_pool, backend):
    pool = make_pool(initializer=initialise, initargs=("model.pkl",))
    results = pool.map(report, range(12), chunksize=2)
    assert [x for x, _, _ in results] == list(range(12))
    # Each process saw the initializer run exactly once, with its arguments, before any task.
    assert {state for _, _, state in results} == {"1|model.pkl"}
    if backend != "local_workers":  # array mode: every chunk has a process of its own
        pids = collections.Counter(pid for _, pid, _ in results)
        assert set(pids.values()) == {2}


def test_an_initializer_that_raises_fails_the_map_with_its_exception(make_pool):
    pool = make_pool(initializer=failing_initialise)
    with pytest.raises(ConnectionError, match="no database here") as info:
        pool.map(report, range(4), chunksize=1)
    assert "raised by the pool's initializer" in " ".join(info.value.__notes__)


@pytest.mark.backends(["local_workers"])
def test_a_worker_process_runs_at_most_maxtasksperchild_chunks(make_pool):
    pool = make_pool(maxtasksperchild=1)
    results = pool.map(report, range(6), chunksize=1)
    assert len({pid for _, pid, _ in results}) == 6


def test_a_lambdas_traceback_shows_its_file_and_line(make_pool):
    pool = make_pool()
    with pytest.raises(ZeroDivisionError) as info:
        pool.map(lambda x: x / 0, [1])  # the line the traceback shows
    cause = info.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert f'File "{__file__}"' in cause.tb
    assert "pool.map(lambda x: x / 0, [1])  # the line the traceback shows" in cause.tb


def test_source_lines_travel_for_a_file_the_workers_cannot_read(make_pool, tmp_path):
    """As for a notebook's cell: the source is in the driver's linecache only."""
    filename = str(tmp_path / "cell-that-is-nowhere.py")
    source = "def divide(x):\n    return x / 0  # in the cell\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {}
    exec(compile(source, filename, "exec"), namespace)
    pool = make_pool()
    with pytest.raises(ZeroDivisionError) as info:
        pool.map(namespace["divide"], [1])
    assert f'File "{filename}", line 2, in divide' in info.value.__cause__.tb
    assert "return x / 0  # in the cell" in info.value.__cause__.tb


@pytest.mark.backends(["local"])
def test_callbacks_run_one_at_a_time_in_one_thread(make_pool):
    pool = make_pool()
    threads, seen, running, overlaps = set(), [], [0], []

    def callback(value):
        threads.add(threading.get_ident())
        running[0] += 1
        overlaps.append(running[0])
        time.sleep(0.02)  # room for another callback to overlap, were they in threads
        seen.append(value)  # a plain list: no lock needed, as with multiprocessing
        running[0] -= 1

    results = [pool.apply_async(abs, (-i,), callback=callback) for i in range(8)]
    assert [r.get(120) for r in results] == list(range(8))
    assert sorted(seen) == list(range(8))  # get() returned once the callback had run
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert max(overlaps) == 1


@pytest.mark.backends(["local"])
def test_an_unclosed_pool_warns_when_collected_as_multiprocessing_does(backend):
    pool = pp.LocalPool(1)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        gc.collect()
    closed = pp.LocalPool(1)
    closed.close()
    assert closed._state == multiprocessing.pool.CLOSE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del closed
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
