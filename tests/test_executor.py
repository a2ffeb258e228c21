"""PoolExecutor: the concurrent.futures interface, with the behaviour the standard library's
executors have (futures usable with wait and as_completed, map in order with timeout and
chunksize, cancellation, shutdown), and batching: many submit calls are one map, one array."""
from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import shutil
import threading
import time
import weakref

import pytest

import poolparty_raster as pp
from poolparty_raster.errors import RemoteTraceback
from poolparty_raster.executor import PoolExecutor

# LocalPool in both modes and the dummy SLURM: the executor is the same code whatever runs the
# chunks, and these cover a pool of processes, of workers and of a scheduler's arrays.
EXECUTOR_BACKENDS = ["local", "local_workers", "dummy_slurm_array"]


pytestmark = pytest.mark.backends(EXECUTOR_BACKENDS)


@pytest.fixture
def pool(make_pool):
    return make_pool()


@pytest.fixture
def out(tmp_path):
    """A directory for the files tasks write (tmp_path also holds the work_dirs)."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def mul(x, y=1):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def touch(path):
    with open(path, "w"):
        pass
    return path


def wait_for_file(path, limit=60.0):
    """Return once ``path`` exists (the test creates it when the task may end)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "released"


def test_submit_gives_futures_that_wait_and_as_completed_accept(pool):
    with PoolExecutor(pool) as executor:
        futures = [executor.submit(mul, i, y=3) for i in range(20)]
        done, not_done = cf.wait(futures, timeout=120)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(futures)) == [3 * i for i in range(20)]
        assert all(isinstance(f, cf.Future) for f in futures)


def test_submit_passes_keywords_named_like_its_own_parameters(pool):
    with PoolExecutor(pool) as executor:
        assert executor.submit(capture, 1, self=2, fn=3).result(120) == ((1,), {"self": 2, "fn": 3})
        with pytest.raises(TypeError):
            executor.submit(fn=capture, arg=1)


def test_a_calls_exception_is_set_on_its_future_only_with_the_remote_traceback(pool):
    with PoolExecutor(pool) as executor, executor.batch():
        good = executor.submit(divmod, 7, 2)
        bad = executor.submit(divmod, 1, 0)
    assert good.result(120) == (3, 1)
    error = bad.exception(120)
    assert isinstance(error, ZeroDivisionError)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "ZeroDivisionError" in error.__cause__.tb
    with pytest.raises(ZeroDivisionError):
        bad.result()


def test_map_returns_in_order_with_chunksize_and_raises_at_the_failing_place(pool):
    with PoolExecutor(pool) as executor:
        assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
        assert list(executor.map(pow, range(10), range(10), chunksize=3)) == [i ** i for i in range(10)]
        results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
        assert next(results) == (0, 1)
        assert next(results) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(results)
        assert list(executor.map(mul, [])) == []
        with pytest.raises(ValueError):
            executor.map(mul, [1], chunksize=0)


def test_map_timeout_raises_timeout_error(pool, tmp_path):
    release = tmp_path / "release"
    with PoolExecutor(pool) as executor:
        results = executor.map(wait_for_file, [str(release)], timeout=0.5)
        try:
            with pytest.raises(cf.TimeoutError):
                next(results)
        finally:
            touch(release)  # the task may end now: shutdown waits for it


def test_a_pending_future_can_be_cancelled_and_never_runs(pool, out):
    with PoolExecutor(pool) as executor:
        with executor.batch():
            kept = executor.submit(touch, str(out / "kept"))
            dropped = executor.submit(touch, str(out / "dropped"))
            assert dropped.cancel()
        assert kept.result(120) == str(out / "kept")
    assert dropped.cancelled()
    assert not kept.cancel()  # finished: too late
    assert os.listdir(out) == ["kept"]


def test_batch_holds_submissions_until_it_exits(pool, out):
    with PoolExecutor(pool, linger=0.0) as executor:
        with executor.batch():
            futures = [executor.submit(touch, str(out / str(i))) for i in range(5)]
            done, _ = cf.wait(futures, timeout=0.5)
            assert not done and not any(f.running() for f in futures)
        assert cf.wait(futures, timeout=120).not_done == set()
    assert sorted(os.listdir(out)) == sorted(str(i) for i in range(5))


# A linger of an hour: only the wait itself can have sent these batches within the test.
HOUR = 3600.0


def test_as_completed_sends_the_batch_without_lingering(pool):
    with PoolExecutor(pool, linger=HOUR) as executor:
        futures = [executor.submit(mul, i, 3) for i in range(20)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=120)) == \
            [3 * i for i in range(20)]


def test_wait_sends_the_batch_without_lingering(pool):
    with PoolExecutor(pool, linger=HOUR) as executor:
        futures = [executor.submit(mul, i, 3) for i in range(20)]
        done, not_done = cf.wait(futures, timeout=120, return_when=cf.FIRST_COMPLETED)
        assert done and all(f.running() or f.done() for f in not_done)
        assert cf.wait(futures, timeout=120).not_done == set()


def test_waiting_on_a_result_inside_batch_sends_the_batch(pool):
    with PoolExecutor(pool) as executor, executor.batch():
        assert executor.submit(mul, 6, 7).result(120) == 42


def test_shutdown_cancel_futures_cancels_what_is_pending_and_finishes_what_was_sent(pool, out):
    executor = PoolExecutor(pool)
    sent = executor.submit(mul, 2, 21)
    assert sent.result(120) == 42
    with executor.batch():
        pending = [executor.submit(touch, str(out / str(i))) for i in range(10)]
        executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    assert os.listdir(out) == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(mul, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(mul, [1])


def test_shutdown_waits_for_every_submitted_call(pool):
    executor = PoolExecutor(pool)
    futures = [executor.submit(mul, i, 2) for i in range(30)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [2 * i for i in range(30)]


def test_an_unpicklable_argument_fails_its_own_future_only(pool):
    with PoolExecutor(pool) as executor, executor.batch():
        good = executor.submit(mul, 4, 5)
        bad = executor.submit(mul, threading.Lock())
    assert good.result(120) == 20
    assert isinstance(bad.exception(120), TypeError)


class Payload:
    def method(self):
        return "done"


def test_the_executor_keeps_no_reference_to_a_finished_call(pool):
    payload = Payload()
    collected = threading.Event()
    ref = weakref.ref(payload, lambda _: collected.set())
    with PoolExecutor(pool) as executor:
        assert executor.submit(payload.method).result(120) == "done"
        del payload
        gc.collect()
        assert collected.is_set(), ref()


def test_futures_of_one_batch_finish_as_their_chunks_do(tmp_path):
    """A long call does not hold back the futures of the other chunks of its batch."""
    release = tmp_path / "release"
    pool = pp.LocalPool(2, mode="workers", progress=False)
    try:
        with PoolExecutor(pool, chunksize=1) as executor:
            with executor.batch():
                slow = executor.submit(wait_for_file, str(release))
                quick = [executor.submit(mul, i, 10) for i in range(4)]
            try:
                assert [f.result(120) for f in quick] == [0, 10, 20, 30]
                assert not slow.done()
            finally:
                touch(release)
            assert slow.result(120) == "released"
    finally:
        pool.terminate()


def test_a_thousand_submits_are_a_handful_of_sbatch_calls(dummy_slurm):
    pool = pp.SlurmArrayPool(polling_interval=0.5, filesystem_lag=0.5, progress=False)
    try:
        with PoolExecutor(pool) as executor:
            futures = [executor.submit(mul, i, 2) for i in range(1000)]
            assert cf.wait(futures, timeout=300).not_done == set()  # wait() sends the batch
            assert [f.result() for f in futures] == [2 * i for i in range(1000)]
    finally:
        pool.terminate()
    # One map is one array (one sbatch); a loop stalled past the linger by a busy machine
    # makes a few maps, never anything near one per call.
    assert 1 <= len(dummy_slurm.calls_to("sbatch")) <= 5


def test_batch_is_exactly_one_sbatch(dummy_slurm):
    pool = pp.SlurmArrayPool(polling_interval=0.5, filesystem_lag=0.5, progress=False)
    try:
        with PoolExecutor(pool) as executor:
            with executor.batch():
                futures = [executor.submit(mul, i) for i in range(300)]
            assert cf.wait(futures, timeout=300).not_done == set()
    finally:
        pool.terminate()
    assert len(dummy_slurm.calls_to("sbatch")) == 1


@pytest.fixture
def counted_sbatch(real_slurm, tmp_path, monkeypatch):
    """The real sbatch behind a wrapper that logs each call: returns the log's path."""
    real = shutil.which("sbatch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    log.touch()
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(f'#!/bin/sh\necho sbatch >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_real_slurm_two_hundred_submits_are_one_array(counted_sbatch):
    pool = pp.SlurmArrayPool(polling_interval=0.5, filesystem_lag=0.5, progress=False)
    try:
        # 10 elements, not the default chunksize's 50: what is batched is the submits, not
        # the chunks, and each element is a job the real SLURM starts on this machine.
        with PoolExecutor(pool, chunksize=20) as executor:
            futures = [executor.submit(mul, i, 2) for i in range(200)]
            assert sorted(f.result() for f in cf.as_completed(futures, timeout=300)) == \
                [2 * i for i in range(200)]
    finally:
        pool.terminate()
    assert counted_sbatch.read_text().split() == ["sbatch"]


def test_options_are_checked():
    pool = pp.SerialPool()
    with pytest.raises(ValueError):
        PoolExecutor(pool, linger=-1)
    with pytest.raises(ValueError):
        PoolExecutor(pool, chunksize=0)
