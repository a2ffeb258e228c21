"""The pool contract: every backend behaves as multiprocessing.Pool does, and survives failures.

Runs on every backend in conftest.BACKENDS (and the dummy / real schedulers where present).
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import stat
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import engine
from poolparty_raster.schedulers.base import Scheduler
from workdirlog import log_events

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise KeyError(f"no key {x}")
    return x


def die_on_three(x):
    if x == 3:
        print("task 3 is about to die", file=sys.stderr, flush=True)
        os._exit(17)
    return x


def die_once(args):
    """Dies the first time it runs (leaves a marker), succeeds after a resubmission."""
    x, marker_dir = args
    marker = os.path.join(marker_dir, f"ran-{x}")
    if x == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return x


def record_and_maybe_die(args):
    x, record_dir, flag = args
    with open(os.path.join(record_dir, f"{x}-{os.getpid()}"), "w"):
        pass
    if x == 3 and os.path.exists(flag):
        os._exit(5)
    return x + 100


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        return x * self.factor


@pytest.fixture
def prompt_polls(monkeypatch):
    """Polls at least 0.2 s apart, not a second (the spacing that spares a busy controller):
    a task's death is noticed two polls and filesystem_lag after it, and these tests wait for
    one to four deaths each, on every backend. The rule that notices it is the same."""
    monkeypatch.setattr(Scheduler, "min_poll_interval", 0.2)


def kept_dirs(tmp_path):
    root = tmp_path / "work"
    return sorted(p for p in root.iterdir()) if root.exists() else []



def test_map_equals_builtin_map_in_order(make_pool):
    pool = make_pool()
    assert pool.map(square, range(23)) == list(map(square, range(23)))


@pytest.mark.front
def test_generators_and_chunksizes(make_pool):
    pool = make_pool()
    assert pool.map(square, (x for x in range(10)), chunksize=3) == [x * x for x in range(10)]
    assert list(pool.imap(square, iter(range(7)))) == [x * x for x in range(7)]
    assert sorted(pool.imap_unordered(square, range(7), chunksize=2)) == sorted(x * x for x in range(7))


@pytest.mark.front
def test_empty_iterable_submits_nothing(make_pool, tmp_path):
    pool = make_pool()
    assert pool.map(square, []) == []
    assert list(pool.imap(square, iter([]))) == []
    assert kept_dirs(tmp_path) == []


@pytest.mark.front
def test_lambdas_closures_and_bound_methods(make_pool):
    pool = make_pool()
    offset = 10
    assert pool.map(lambda x: x + offset, [1, 2]) == [11, 12]
    assert pool.map(Scaler(3).scale, [1, 2]) == [3, 6]
    assert pool.starmap(pow, [(2, 5), (3, 2)]) == [32, 9]
    assert pool.apply(divmod, (17, 5)) == (3, 2)
    assert pool.apply(dict, kwds={"a": 1}) == {"a": 1}


def test_task_exception_is_reraised_with_remote_traceback(make_pool, tmp_path, backend):
    pool = make_pool()
    with pytest.raises(KeyError) as info:
        pool.map(fail_on_three, range(6), chunksize=2)
    exc = info.value
    assert "no key 3" in str(exc)
    notes = " ".join(getattr(exc, "__notes__", []))
    assert "task 3" in notes
    if backend != "serial":
        assert isinstance(exc.__cause__, pp.RemoteTraceback)
        assert "fail_on_three" in exc.__cause__.tb
        (kept,) = kept_dirs(tmp_path)
        assert str(kept) in notes


@pytest.mark.front
def test_imap_raises_at_the_failing_position(make_pool):
    pool = make_pool()
    seen = []
    with pytest.raises(KeyError):
        for value in pool.imap(fail_on_three, range(6)):
            seen.append(value)
    assert seen == [0, 1, 2]


@pytest.mark.front
def test_async_results_and_callbacks(make_pool):
    pool = make_pool()
    got, errors = [], []
    result = pool.map_async(square, range(4), callback=got.append)
    assert result.get(timeout=60) == [0, 1, 4, 9]
    assert result.ready() and result.successful()
    assert got == [[0, 1, 4, 9]]
    failing = pool.apply_async(fail_on_three, (3,), error_callback=errors.append)
    failing.wait(60)
    assert not failing.successful()
    with pytest.raises(KeyError):
        failing.get()
    assert isinstance(errors[0], KeyError)
    assert pool.starmap_async(pow, [(2, 2)]).get(60) == [4]


@pytest.mark.front
def test_closed_pool_refuses_new_work(make_pool):
    pool = make_pool()
    pool.close()
    with pytest.raises(ValueError):
        pool.map(square, [1])
    with pytest.raises(ValueError):
        pool.apply_async(square, (1,))
    pool.join()


@pytest.mark.front
def test_a_pool_left_by_its_with_block_cannot_be_entered_again(make_pool):
    pool = make_pool()
    with pool:
        assert pool.map(square, [2]) == [4]
    with pytest.raises(ValueError, match="not running"):  # as multiprocessing's (bpo-35477)
        with pool:
            pass
    pool.join()


@pytest.mark.front
def test_unpicklable_function_fails_before_submission(make_pool, tmp_path, backend):
    if backend == "serial":
        pytest.skip("SerialPool pickles nothing: every function works in-process")
    pool = make_pool()
    import threading
    lock = threading.Lock()
    with pytest.raises(TypeError):
        pool.map(lambda x: lock, [1])  # the closure holds a lock: cloudpickle refuses it
    with pytest.raises(TypeError):
        pool.map(square, [lock])
    assert kept_dirs(tmp_path) == []


@pytest.mark.front
def test_unpicklable_result_fails_that_task_as_multiprocessing_fails_it(make_pool, backend):
    if backend == "serial":
        pytest.skip("SerialPool returns results without pickling them")
    pool = make_pool()
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
        pool.map(lambda x: x if x != 1 else (i for i in range(x)), [0, 1, 2])
    assert "task 1" in " ".join(info.value.__notes__)


def carries_what_only_cloudpickle_can(x):
    return x, (lambda y: y + x), Scaler(x)


def test_results_that_only_cloudpickle_can_carry_come_back(make_pool):
    values = make_pool().map(carries_what_only_cloudpickle_can, [1, 2])
    assert [(x, add(10), scaler.scale(5)) for x, add, scaler in values] == [(1, 11, 5), (2, 12, 10)]


@pytest.mark.usefixtures("prompt_polls")
def test_dead_task_is_resubmitted_and_succeeds(make_pool, tmp_path, backend):
    if backend == "serial":
        pytest.skip("a task that kills its process kills a SerialPool's caller")
    markers = tmp_path / "markers"
    markers.mkdir()
    pool = make_pool(keep_work_dir=True)
    assert pool.map(die_once, [(x, str(markers)) for x in range(4)], chunksize=1) == [0, 1, 2, 3]
    (kept,) = kept_dirs(tmp_path)
    events = [e["event"] for e in log_events(kept)]
    assert events.count("lost") == 1  # one dead attempt, noticed and recovered


@pytest.mark.usefixtures("prompt_polls")
def test_task_that_always_dies_raises_task_lost_error(make_pool, tmp_path, backend):
    if backend == "serial":
        pytest.skip("a task that kills its process kills a SerialPool's caller")
    pool = make_pool(max_num_resubmissions=1)
    with pytest.raises(pp.TaskLostError) as info:
        pool.map(die_on_three, range(6), chunksize=2)
    error = info.value
    assert error.task_indices == [2, 3]
    assert error.attempts == {1: 2}
    assert "task 3 is about to die" in str(error)
    (kept,) = kept_dirs(tmp_path)
    assert error.work_dir == str(kept)


@pytest.mark.usefixtures("prompt_polls")
def test_resume_runs_only_what_has_no_result(make_pool, tmp_path, backend):
    if backend == "serial":
        pytest.skip("SerialPool keeps no work_dir")
    records, flag = tmp_path / "records", tmp_path / "die"
    records.mkdir()
    flag.touch()
    work_dir = str(tmp_path / "resumable")
    tasks = [(x, str(records), str(flag)) for x in range(6)]
    with pytest.raises(pp.TaskLostError):
        make_pool(work_dir=work_dir, max_num_resubmissions=0).map(record_and_maybe_die, tasks, chunksize=2)
    flag.unlink()
    runs_before = {name.split("-")[0] for name in os.listdir(records)}
    assert runs_before == {"0", "1", "2", "3", "4", "5"}
    for name in os.listdir(records):
        os.unlink(records / name)
    assert make_pool(work_dir=work_dir).map(record_and_maybe_die, tasks, chunksize=2) == [
        x + 100 for x in range(6)]
    assert sorted(name.split("-")[0] for name in os.listdir(records)) == ["2", "3"]
    assert not os.path.exists(work_dir)  # a clean map removes its work_dir
    with pytest.raises(pp.TaskLostError):
        flag.touch()
        make_pool(work_dir=work_dir, max_num_resubmissions=0).map(record_and_maybe_die, tasks, chunksize=2)
    with pytest.raises(pp.WorkDirMismatchError, match="different map"):
        make_pool(work_dir=work_dir).map(record_and_maybe_die, tasks[:5], chunksize=2)


def test_work_dir_is_private_and_small(make_pool, tmp_path, backend, monkeypatch):
    if backend == "serial":
        pytest.skip("SerialPool keeps no work_dir")
    pool = make_pool(keep_work_dir=True)
    # Default chunks on local (8); on clusters 20 chunks of 500 say the same for less time.
    chunksize = None if backend.startswith("local") else 500
    assert pool.map(square, range(10_000), chunksize) == [x * x for x in range(10_000)]
    if backend == "local":  # more chunks than REDUCE_AT_LEAST: the driver reduces mid-map
        monkeypatch.setattr(engine, "REDUCE_AT_LEAST", 64)  # the map stays small
        assert pool.map(square, range(100), chunksize=1) == [x * x for x in range(100)]
        reductions = [[e["event"] for e in log_events(kept)].count("reduced")
                      for kept in kept_dirs(tmp_path)]
        assert sorted(reductions) == [1, 2]  # the 100-chunk map reduced once while it ran
    for kept in kept_dirs(tmp_path):
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o700
        files = os.listdir(kept)
        assert len(files) <= 16, files
        for name in files:
            assert stat.S_IMODE(os.stat(kept / name).st_mode) == 0o600, name


def test_work_dir_removed_when_clean_kept_when_stderr(make_pool, tmp_path, backend):
    if backend == "serial":
        pytest.skip("SerialPool keeps no work_dir")
    pool = make_pool()
    pool.map(square, range(3))
    assert kept_dirs(tmp_path) == []
    pool.map(lambda x: print("careful", file=sys.stderr), range(3))
    assert len(kept_dirs(tmp_path)) == 1


@pytest.mark.front
def test_refuses_a_directory_that_is_not_a_work_dir(make_pool, tmp_path, backend):
    if backend == "serial":
        pytest.skip("SerialPool keeps no work_dir")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(pp.WorkDirMismatchError, match="not empty"):
        make_pool(work_dir=str(precious)).map(square, [1])
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.front
def test_get_timeout_raises_multiprocessing_timeout(make_pool, backend):
    if backend == "serial":
        pytest.skip("SerialPool's async results run in a thread too, but the task is instant")
    import time
    pool = make_pool()
    result = pool.apply_async(time.sleep, (30,))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.2)
    pool.terminate()
    with pytest.raises(pp.MapTerminated):  # at once, not after the task's 30 s
        result.get(timeout=20)


@pytest.mark.parametrize("cls", [pp.SerialPool, pp.LocalPool, pp.SlurmArrayPool, pp.SlurmPool,
                                 pp.SgePool, pp.PbsPool, pp.LsfPool])
def test_misspelt_option_lists_valid_ones(cls):
    with pytest.raises(TypeError, match="did you mean 'verbose'.*valid options: "):
        cls(verbos=True)
