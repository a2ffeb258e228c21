"""A map in which tasks both raised and died: the caller catches the first raised exception
(their own type, as with multiprocessing), and a note names the lost tasks with what the
scheduler said. With nothing raised, the map still raises TaskLostError."""
from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import poolparty_raster as pp

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.backends(["local", "local_workers", "dummy_slurm_array"])


def raises_or_dies(x):
    """Tasks 2 and 9 raise; tasks 5 and 6 kill their process."""
    if x in (2, 9):
        raise ValueError(f"bad input {x}")
    if x in (5, 6):
        print(f"task {x} is about to die", file=sys.stderr, flush=True)
        os._exit(17)
    return x


def dies_before_it_raises(x):
    """Task 1 dies; task 4, in a later chunk than the lost one, raises."""
    if x == 1:
        os._exit(17)
    if x == 4:
        raise KeyError(x)
    return x


def dies(x):
    if x == 3:
        os._exit(17)
    return x


def notes_of(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def test_the_first_raised_exception_is_raised_with_the_lost_tasks_in_a_note(make_pool):
    pool = make_pool(max_num_resubmissions=1)
    with pytest.raises(ValueError, match="bad input 2") as info:
        pool.map(raises_or_dies, range(12), chunksize=1)
    notes = notes_of(info.value)
    assert "raised by task 2" in notes
    assert "2 task(s) died without a result after 1 resubmission(s): task indices 5-6" in notes
    assert "task 5 is about to die" in notes  # what the dead attempts wrote
    # What the scheduler said of the deaths: LocalPool's exit code, SLURM's state and reason.
    assert "attempts 1-2: exit code 17" in notes or "attempts 1-2: FAILED NonZeroExitCode" in notes
    assert isinstance(info.value.__cause__, pp.RemoteTraceback)  # the remote traceback kept


def test_a_task_that_raised_after_a_lost_chunk_is_still_the_one_raised(make_pool):
    pool = make_pool(max_num_resubmissions=0)
    with pytest.raises(KeyError) as info:
        pool.map(dies_before_it_raises, range(6), chunksize=2)
    notes = notes_of(info.value)
    assert "raised by task 4" in notes and "task indices 0-1" in notes


def test_with_nothing_raised_the_map_raises_task_lost_error(make_pool):
    with pytest.raises(pp.TaskLostError) as info:
        make_pool(max_num_resubmissions=0).map(dies, range(5), chunksize=1)
    assert info.value.task_indices == [3]


def test_an_executors_futures_get_their_own_tasks_errors(make_pool):
    pool = make_pool(max_num_resubmissions=0)
    with pool.executor(linger=0.0, chunksize=1) as executor:
        with executor.batch():
            futures = [executor.submit(raises_or_dies, x) for x in range(8)]
    errors = {x: future.exception() for x, future in enumerate(futures)}
    assert isinstance(errors[2], ValueError)
    assert isinstance(errors[5], pp.TaskLostError) and isinstance(errors[6], pp.TaskLostError)
    assert errors[5].task_indices == [5, 6]
    assert [x for x, error in errors.items() if error is None] == [0, 1, 3, 4, 7]
