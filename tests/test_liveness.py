"""A driver stays alive to its results while the scheduler does not answer: a hung poll
command holds back neither the results already in the work_dir nor the end of the map, and
the map still fails when the scheduler stays silent for good."""
from __future__ import annotations

import json
import sys
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from dummy_queues import _state
from poolparty_raster import polling
from poolparty_raster.errors import SchedulerError
from poolparty_raster.polling import SUCCEEDED_GRACE, Presence, Seen, observe
from poolparty_raster.schedulers.base import TaskState, TaskStatus

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}
HANG = 600.0  # seconds a hung squeue takes to answer: far longer than any map here


def after_a_poll_hangs(args):
    """A chunk that ends only once a poll hangs: its result comes while nothing answers."""
    x, state_path = args
    deadline = time.monotonic() + 60
    while True:
        with open(state_path) as f:
            if json.load(f)["hanging"]:
                break
        if time.monotonic() > deadline:
            raise TimeoutError("no poll hung")
        time.sleep(0.05)
    return x * 10


def hanging_polls(queue) -> list[dict]:
    """The squeue calls that took the injected hang and still hang."""
    return [p for p in queue.state()["hanging"] if _state.is_alive(p["pid"], p["pstart"])]


@pytest.mark.parametrize("mode", ["array", "workers"])
def test_results_arrive_and_the_map_ends_while_a_poll_hangs(dummy_slurm, mode):
    """Every squeue hangs (longer than slurm_call_timeout), and every chunk ends after the
    first poll began to hang: the map still hands out all the results while that poll hangs,
    and returns without waiting for it."""
    dummy_slurm.inject_command_failure("squeue", times=1000, mode="hang", seconds=HANG)
    pool = pp.SlurmArrayPool(mode=mode, max_workers=2, **FAST)
    started = time.monotonic()
    tasks = [(x, dummy_slurm.state_path) for x in range(8)]
    assert pool.map(after_a_poll_hangs, tasks, chunksize=1) == [x * 10 for x in range(8)]
    took = time.monotonic() - started
    # a few seconds; a driver that waits for the poll takes slurm_call_timeout (60 s) at least
    assert took < 30, f"the map took {took:.1f} s"
    assert len(dummy_slurm.calls_to("squeue")) == 1, "polls ran side by side"
    assert hanging_polls(dummy_slurm), "the map waited for the hung poll"


def sleeps_long(x):
    time.sleep(120)  # cancelled when the map fails
    return x


def test_a_poll_that_never_answers_fails_the_map_after_the_outage_limit(dummy_slurm,
                                                                         monkeypatch):
    monkeypatch.setattr(polling, "MAX_POLL_OUTAGE", 2.0)  # the 30 minutes, shortened
    dummy_slurm.inject_command_failure("squeue", times=1000, mode="hang", seconds=HANG)
    started = time.monotonic()
    with pytest.raises(SchedulerError, match="has not answered a poll"):
        pp.SlurmArrayPool(**FAST).map(sleeps_long, range(2), chunksize=1)
    assert time.monotonic() - started < 30
    assert dummy_slurm.wait_idle(30), dummy_slurm.jobs()  # and its jobs were cancelled


def test_one_reading_of_a_poll_tells_when_a_member_that_left_the_queue_is_gone():
    """Chunks (array mode) and workers (workers mode) are read by the same function: gone
    after two polls and the filesystem's lag, a job that ended well after SUCCEEDED_GRACE
    where that is asked for, and a listed member starts counting afresh."""
    running, ended_well = TaskStatus(TaskState.RUNNING), TaskStatus(TaskState.FINISHED, succeeded=True)
    presence = Presence()
    assert observe(presence, running, 0.0, lag=3.0) is Seen.LISTED
    assert [observe(presence, None, now, lag=3.0) for now in (10.0, 12.0, 13.0)] == [
        Seen.VANISHED, Seen.MISSING, Seen.GONE]
    assert observe(presence, running, 14.0, lag=3.0) is Seen.LISTED
    assert observe(presence, None, 15.0, lag=0.0) is Seen.GONE  # no lag: one poll is enough
    waited = Presence()
    assert [observe(waited, ended_well, now, 3.0, succeeded_grace=True)
            for now in (0.0, 3.0, SUCCEEDED_GRACE)] == [Seen.VANISHED, Seen.MISSING, Seen.GONE]
    assert observe(Presence(), ended_well, 0.0, 0.0, succeeded_grace=True) is Seen.GONE
    assert observe(Presence(), TaskStatus(TaskState.ERROR, "Eqw"), 0.0, 3.0) is Seen.ERROR_STATE
    assert observe(Presence(), TaskStatus(TaskState.FATAL, "bad"), 0.0, 3.0) is Seen.FATAL
