"""The failures of real shared clusters, injected into the dummy schedulers: every map still
returns the right results, or fails fast with a clear error, and never hangs."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from dummy_queues._queue import DummyQueue
from poolparty_raster import arraymode, submissions
from poolparty_raster.errors import SchedulerError
from poolparty_raster.schedulers import base
from workdirlog import log_events

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# (fixture, pool constructor, first array task id as the scheduler numbers it)
CLUSTERS = {
    "slurm_array": ("dummy_slurm", pp.SlurmArrayPool, 0),
    "slurm_jobs": ("dummy_slurm", pp.SlurmPool, None),
    "sge": ("dummy_sge", pp.SgePool, 1),
    "pbs": ("dummy_pbs", pp.PbsPool, 0),
    "lsf": ("dummy_lsf", pp.LsfPool, 1),
    "htcondor": ("dummy_htcondor", pp.HTCondorPool, 0),
}
SUBMIT = {"slurm": "sbatch", "sge": "qsub", "pbs": "qsub", "lsf": "bsub",
          "htcondor": "condor_submit"}
POLL = {"slurm": "squeue", "sge": "qstat", "pbs": "qstat", "lsf": "bjobs", "htcondor": "condor_q"}
CANCEL = {"slurm": "scancel", "sge": "qdel", "pbs": "qdel", "lsf": "bkill",
          "htcondor": "condor_rm"}
FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}


def plus_one(x):
    return x + 1


def nap(x):
    time.sleep(0.3)
    return x


@pytest.fixture(params=list(CLUSTERS))
def cluster(request):
    fixture, pool_class, first_task = CLUSTERS[request.param]
    queue = request.getfixturevalue(fixture)
    return queue, pool_class, first_task


@pytest.fixture
def vanishing(cluster, monkeypatch):
    """The cluster, its first element to vanish once. Grid Engine's listing drops the element
    and its qacct never knows it: the driver asks for ACCOUNTING_PATIENCE before it counts the
    chunk lost, a minute that only a real qacct's lag needs."""
    queue, _, first_task = cluster
    monkeypatch.setattr(arraymode, "ACCOUNTING_PATIENCE", 1.0)
    queue.inject_vanish(task=first_task, count=1)
    return cluster


def events_of(tmp_path):
    (work_dir,) = (tmp_path / "work").iterdir()
    return log_events(work_dir)


def test_error_state_is_cancelled_and_resubmitted(cluster, tmp_path):
    queue, pool_class, first_task = cluster
    queue.inject_error_state(task=first_task, count=1)
    pool = pool_class(keep_work_dir=True, **FAST)
    assert pool.map(plus_one, range(8), chunksize=2) == list(range(1, 9))
    assert [e["event"] for e in events_of(tmp_path)].count("error_state") == 1
    assert queue.calls_to(CANCEL[queue.scheduler])


def sleeps_long(x):
    time.sleep(120)
    return x


def test_terminate_cancels_the_jobs_although_the_first_cancel_fails(cluster):
    queue, pool_class, _ = cluster
    cancel = CANCEL[queue.scheduler]
    pool = pool_class(**FAST)
    result = pool.map_async(sleeps_long, range(3), chunksize=1)
    deadline = time.monotonic() + 60
    while not any(job["state"] == "RUNNING" for job in queue.jobs()):  # the queue's word
        assert time.monotonic() < deadline, "no job started"
        time.sleep(0.05)
    queue.inject_command_failure(cancel, times=1)
    pool.terminate()
    with pytest.raises(pp.MapTerminated):
        result.get(timeout=60)
    assert queue.wait_idle(timeout=30), queue.jobs()
    assert len(queue.calls_to(cancel)) >= 2


def test_error_state_that_persists_ends_in_task_lost_error(cluster):
    queue, pool_class, first_task = cluster
    if queue.scheduler == "pbs":  # a lone resubmitted chunk is a plain PBS job, not element 0
        first_task = None
    queue.inject_error_state(task=first_task, count=100)
    with pytest.raises(pp.TaskLostError) as info:
        pool_class(max_num_resubmissions=1, **FAST).map(plus_one, range(4), chunksize=2)
    # an array's first element, or (one job per chunk: no task ids) every job
    assert info.value.task_indices == ([0, 1] if first_task is not None else [0, 1, 2, 3])


def test_vanished_task_is_resubmitted(vanishing, tmp_path):
    queue, pool_class, _ = vanishing
    pool = pool_class(keep_work_dir=True, **FAST)
    assert pool.map(plus_one, range(6), chunksize=2) == list(range(1, 7))
    assert [e["event"] for e in events_of(tmp_path)].count("lost") == 1


def long_nap(x):
    time.sleep(2.5)  # long enough for the driver to poll the scheduler (after 1 s) at least twice
    return x


def once_a_poll_failed(args):
    """Return once the driver logged a failed poll (or after a minute: the test then says so)."""
    x, log = args
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log) as f:
            if '"poll_failed"' in f.read():
                break
        time.sleep(0.05)
    return x


@pytest.mark.parametrize("mode", ["fail", "garble"])
def test_failing_poll_command_costs_polls_not_the_map(cluster, tmp_path, mode):
    queue, pool_class, _ = cluster
    queue.inject_command_failure(POLL[queue.scheduler], times=1, mode=mode)
    work_dir = tmp_path / "w"
    pool = pool_class(work_dir=str(work_dir), keep_work_dir=True, **FAST)
    log = str(work_dir / "log.jsonl")
    assert pool.map(once_a_poll_failed, [(0, log), (1, log)], chunksize=1) == [0, 1]
    failures = [e for e in log_events(str(work_dir)) if e["event"] == "poll_failed"]
    assert failures, "the injected failures were never seen"
    if mode == "garble":
        assert "could not parse" in failures[0]["error"]


def test_hanging_poll_command_times_out(dummy_slurm):
    dummy_slurm.inject_command_failure("squeue", times=1, mode="hang", seconds=30)
    pool = pp.SlurmArrayPool(slurm_call_timeout=2.0, keep_work_dir=True, **FAST)
    assert pool.map(long_nap, range(2), chunksize=1) == list(range(2))  # well before 30 s
    assert dummy_slurm.calls_to("squeue"), "the hanging command was never called"



def settle(x):
    time.sleep(1.5)  # Grid Engine lists a job only until it ends: long enough to be found
    return x + 1


@pytest.mark.parametrize("mode", ["lose_id", "fail", "garble"])
def test_failed_or_lost_submission_is_retried_and_never_duplicated(cluster, mode):
    queue, pool_class, _ = cluster
    queue.inject_command_failure(SUBMIT[queue.scheduler], times=1, mode=mode)
    assert pool_class(**FAST).map(settle, range(4), chunksize=2) == [1, 2, 3, 4]
    expected = 2 if pool_class is pp.SlurmPool else 1  # one array, or one job per chunk
    assert len(queue.submissions) == expected


LISTING = {"slurm": "squeue", "sge": "qstat", "pbs": "qselect", "lsf": "bjobs",
           "htcondor": "condor_q"}


@pytest.fixture
def quick_retries(monkeypatch):
    """A tenth of each backoff between a scheduler command's retries (0.5 s, doubling: 7.5 s
    for a submission that fails all five times), and 0.2 s, not 2, before a deferred
    submission is tried again: the same calls, in the same order, sooner."""
    pause = base.Scheduler.pause
    monkeypatch.setattr(base.Scheduler, "pause", lambda self, seconds: pause(self, seconds / 10))
    monkeypatch.setattr(submissions, "FIRST_RETRY", 0.2)


@pytest.mark.usefixtures("quick_retries")
def test_a_scheduler_out_of_reach_during_a_submission_defers_it(cluster, tmp_path):
    queue, pool_class, _ = cluster
    queue.inject_command_failure(SUBMIT[queue.scheduler], times=5)  # more than one call retries
    pool = pool_class(keep_work_dir=True, **FAST)
    assert pool.map(plus_one, range(4), chunksize=2) == [1, 2, 3, 4]
    assert [e["event"] for e in events_of(tmp_path)].count("submit_deferred") == 1
    first = queue.submissions[0]["time"]  # nothing can have got in: nothing was looked for
    assert not [c for c in queue.calls_to(LISTING[queue.scheduler]) if c["time"] < first]


@pytest.mark.usefixtures("quick_retries")
def test_a_scheduler_out_of_reach_for_good_fails_the_map(dummy_slurm, monkeypatch):
    monkeypatch.setattr(base, "MAX_OUTAGE", 1.0)  # the polls' 30 minutes, shortened
    dummy_slurm.inject_command_failure("sbatch", times=1000)
    with pytest.raises(SchedulerError, match="sbatch did not reach the scheduler"):
        pp.SlurmArrayPool(**FAST).map(plus_one, range(2))
    assert not dummy_slurm.submissions


def test_a_job_whose_qsub_answer_came_too_late_is_cancelled_when_the_map_ends(dummy_sge):
    """qmaster took the request after the listing looked: the job is unconfirmed, its chunks
    are run again, and it is cancelled by name at the end (else it sits in Eqw for ever)."""
    dummy_sge.inject_command_failure("qsub", mode="late", seconds=1.0)
    dummy_sge.inject_error_state(task=1, count=1)  # its first task: stuck
    assert pp.SgePool(**FAST).map(plus_one, range(2), chunksize=1) == [1, 2]
    assert len(dummy_sge.submissions) == 2
    assert not [j for j in dummy_sge.jobs() if j["state"] in ("PENDING", "RUNNING", "ERROR")]


def sleep_long(x):
    time.sleep(120)  # cancelled when the map fails
    return x


def test_lost_answer_of_a_job_that_ended_before_the_check_is_not_repeated(dummy_sge):
    """Grid Engine lists a job only until it ends: a job whose qsub answer was lost and that
    ended before the listing could show it stays unconfirmed, and is not submitted again."""
    dummy_sge.inject_command_failure("qsub", times=1, mode="lose_id")
    dummy_sge.inject_command_failure("qstat", times=2, mode="fail")  # the listing answers late
    assert pp.SgePool(**FAST).map(plus_one, range(4), chunksize=1) == [1, 2, 3, 4]
    assert len(dummy_sge.submissions) == 1


def test_unreadable_poll_output_fails_the_map_quoting_it(cluster):
    queue, pool_class, _ = cluster
    queue.inject_command_failure(POLL[queue.scheduler], times=100, mode="garble")
    with pytest.raises(pp.SchedulerOutputError, match="could not parse.*polls in a row"):
        pool_class(**FAST).map(sleep_long, range(2), chunksize=1)
    assert queue.wait_idle(30)  # and its jobs were cancelled


def running_at_once(queue) -> int:
    """The most elements the queue ever ran at the same time."""
    edges = sorted([(j["start"], 1) for j in queue.jobs() if j["start"]] +
                   [(j["end"], -1) for j in queue.jobs() if j["end"] and j["start"]])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def naps_a_second(x):
    time.sleep(1)  # the others still run when the polls find the dead one gone (after 2 s)
    return x


@pytest.mark.parametrize("death", [False, True])
def test_throttle_caps_the_chunks_running_at_once(cluster, death, request):
    queue, pool_class, _ = cluster
    if death:  # its resubmission is another array: it must not run beside two others
        request.getfixturevalue("vanishing")
    pool = pool_class(num_simultaneously_running_tasks=2, **FAST)
    task = naps_a_second if death else nap
    assert pool.map(task, range(8), chunksize=1) == list(range(8))
    assert running_at_once(queue) <= 2  # of the queue's 4 slots
    assert not death or len(queue.submissions) > 1  # the dead chunk ran again


@pytest.mark.parametrize("fixture, pool_class", [("dummy_slurm", pp.SlurmArrayPool),
                                                 ("dummy_sge", pp.SgePool),
                                                 ("dummy_lsf", pp.LsfPool)])
def test_throttle_holds_across_the_arrays_of_a_split_map(request, fixture, pool_class):
    queue = request.getfixturevalue(fixture)
    queue.set_limits(max_array_size=3)  # 8 chunks: three arrays at least
    pool = pool_class(num_simultaneously_running_tasks=2, **FAST)
    assert pool.map(nap, range(8), chunksize=1) == list(range(8))
    assert running_at_once(queue) <= 2 and len(queue.submissions) >= 3


def submitted_workers(queue):
    return sum(len(s["tasks"] or [None]) for s in queue.submissions)  # None: a lone job


def holds_the_last_until_the_surplus_is_gone(state_path, x):
    """The last chunk runs until all three worker jobs were submitted and none pends any more
    (or a minute passed): the surplus workers must be cancelled while a worker still runs,
    not when the map ends."""
    if x == 3:
        queue = DummyQueue(os.path.dirname(state_path), "", state_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                submitted_workers(queue) < 3
                or any(job["state"] == "PENDING" for job in queue.jobs())):
            time.sleep(0.05)
    return x


def test_surplus_pending_workers_are_cancelled_as_soon_as_nothing_is_left_for_them(cluster):
    queue, pool_class, _ = cluster
    queue.set_limits(slots=1)  # the first worker claims every chunk while the others wait
    pool = pool_class(mode="workers", max_workers=3, **FAST)
    task = functools.partial(holds_the_last_until_the_surplus_is_gone, queue.state_path)
    assert pool.map(task, range(4), chunksize=1) == list(range(4))
    assert queue.wait_idle(30)
    assert submitted_workers(queue) == 3
    (worker,) = [j for j in queue.jobs() if j["start"]]  # the two others never started
    cancels = queue.calls_to(CANCEL[queue.scheduler])
    # cancelled while the first worker still ran the last chunk, not at the map's end
    assert cancels and cancels[0]["time"] < worker["end"]


def test_map_larger_than_max_array_size_is_split(dummy_slurm):
    dummy_slurm.set_limits(max_array_size=5)
    assert pp.SlurmArrayPool(**FAST).map(plus_one, range(12), chunksize=1) == list(range(1, 13))
    assert len(dummy_slurm.submissions) == 3


def test_per_user_job_limit_is_waited_out(dummy_slurm):
    dummy_slurm.set_limits(max_jobs_per_user=3)
    assert pp.SlurmArrayPool(**FAST).map(plus_one, range(8), chunksize=1) == list(range(1, 9))
    assert all(len(s["tasks"]) <= 3 for s in dummy_slurm.submissions)


def test_lsf_reads_max_job_array_size_and_waits_out_the_pending_job_threshold(dummy_lsf):
    dummy_lsf.set_limits(max_array_size=5, max_jobs_per_user=3)
    assert pp.LsfPool(**FAST).map(plus_one, range(12), chunksize=1) == list(range(1, 13))
    assert dummy_lsf.calls_to("badmin")
    assert all(len(s["tasks"]) <= 3 and max(s["tasks"]) <= 5 for s in dummy_lsf.submissions)


def test_reason_no_resubmission_fixes_fails_the_map_at_once(dummy_slurm):
    dummy_slurm.inject_error_state(task=0, count=1, reason="InvalidAccount")
    with pytest.raises(SchedulerError, match="InvalidAccount"):
        pp.SlurmArrayPool(**FAST).map(plus_one, range(2), chunksize=1)
    assert all(job["state"] not in ("PENDING", "RUNNING", "ERROR") for job in dummy_slurm.jobs())


def test_timed_out_task_is_resubmitted_when_asked(dummy_slurm):
    dummy_slurm.inject_timeout(0.2, task=1, count=1)
    pool = pp.SlurmArrayPool(retry_resources=lambda attempt, reason: {}, **FAST)
    assert pool.map(nap, range(3), chunksize=1) == [0, 1, 2]


RESUMABLE = textwrap.dedent("""
    import sys, time
    import poolparty_raster as pp

    def slow(x):
        time.sleep(3)
        return x * 10

    if __name__ == "__main__":
        pp.SlurmArrayPool(work_dir=sys.argv[1], polling_interval=0.3, progress=False).map(
            slow, range(3), chunksize=1)
""")


def test_resumed_driver_reattaches_to_running_jobs(dummy_slurm, tmp_path):
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE)
    work_dir = tmp_path / "w"
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir)], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (work_dir / "jobs.jsonl").exists():
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)  # no chance to cancel anything
    driver.wait(30)
    resumed = subprocess.run([sys.executable, str(script), str(work_dir)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert not work_dir.exists()  # finished cleanly
    assert len(dummy_slurm.submissions) == 1  # the killed driver's jobs finished the map


def test_a_resumed_map_never_takes_the_earlier_drivers_job_for_its_new_one(dummy_slurm,
                                                                          tmp_path):
    """The resumed driver's first sbatch times out, and nothing got in: the squeue that
    looks for it lists the earlier driver's array, which is not the new job."""
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE.replace("range(3)", "range(4)").replace(
        "polling_interval=0.3", "polling_interval=0.3, slurm_call_timeout=2.0, "
                                "keep_work_dir=True"))
    work_dir = tmp_path / "w"
    dummy_slurm.set_limits(max_jobs_per_user=2)  # the first driver gets chunks 0 and 1 in
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir)], cwd=tmp_path,
                              start_new_session=True)
    deadline = time.monotonic() + 60
    while not (work_dir / "jobs.jsonl").exists():
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # and the sbatch it may be running (jobs run on)
    driver.wait(30)
    dummy_slurm.set_limits(max_jobs_per_user=0)
    dummy_slurm.inject_command_failure("sbatch", mode="hang", seconds=30)
    resumed = subprocess.run([sys.executable, str(script), str(work_dir)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in (work_dir / "jobs.jsonl").read_text().splitlines()]
    assert [(r["job_id"], r["chunks"]) for r in records] == [
        (str(s["job_id"]), chunks) for s, chunks in zip(dummy_slurm.submissions, ([0, 1], [2, 3]))]
    assert "lost" not in [e["event"] for e in log_events(work_dir)]  # each chunk ran once


def dies_once(args):
    x, flag = args
    if x == 1 and os.path.exists(flag):
        os.unlink(flag)
        os._exit(3)  # the worker itself dies
    time.sleep(0.3)
    return x


def test_workers_mode_paces_growth_above_the_minimum(dummy_slurm, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    pool = pp.SlurmArrayPool(mode="workers", min_workers=1, max_workers=2,
                             min_seconds_between_submissions=2.0, **FAST)
    # 24 chunks of 0.3 s: the survivor alone would need 7 s, so chunks are left to claim
    # when the gap allows a replacement, however late the driver sees the death under load
    assert pool.map(dies_once, [(x, str(flag)) for x in range(24)], chunksize=1) == list(range(24))
    first, replacement = dummy_slurm.submissions  # a worker died on chunk 1
    assert len(first["tasks"]) == 2  # max_workers at once
    # one worker still ran: the second waited for the gap since the last submission
    assert replacement["time"] - first["time"] >= 2.0


@pytest.mark.parametrize("min_workers,max_workers", [(2, 2), (0, 1)])
def test_workers_below_the_minimum_are_replaced_at_once(dummy_slurm, tmp_path, min_workers,
                                                        max_workers):
    flag = tmp_path / "flag"
    flag.touch()
    pool = pp.SlurmArrayPool(mode="workers", min_workers=min_workers, max_workers=max_workers,
                             min_seconds_between_submissions=3600, **FAST)
    assert pool.map(dies_once, [(x, str(flag)) for x in range(6)], chunksize=1) == list(range(6))
    # the hour between submissions paces growth above the minimum (and above one worker),
    # not a replacement
    assert len(dummy_slurm.submissions) == 2


MODE_SWITCH = textwrap.dedent("""
    import os, sys, time
    import poolparty_raster as pp

    def gated(task):
        x, gate = task
        while not os.path.exists(gate):  # the test opens it
            time.sleep(0.02)
        return x * 10

    if __name__ == "__main__":
        work_dir, mode, gate = sys.argv[1:]
        print(pp.SlurmArrayPool(work_dir=work_dir, mode=mode, polling_interval=0.3,
                                progress=False).map(gated, [(x, gate) for x in range(3)],
                                                    chunksize=1))
""")


def test_a_map_resumed_in_the_other_mode_cancels_the_earlier_drivers_jobs(dummy_slurm, tmp_path):
    script = tmp_path / "switch.py"
    script.write_text(MODE_SWITCH)
    work_dir, gate = tmp_path / "w", tmp_path / "gate"
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir), "workers", str(gate)],
                              cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (work_dir / "jobs.jsonl").exists():
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)  # its workers run on, held at the gate
    driver.wait(30)
    earlier = dummy_slurm.submissions[0]["job_id"]
    resumed = subprocess.Popen([sys.executable, str(script), str(work_dir), "array", str(gate)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        # The earlier workers cannot finish before the resumed driver cancels them: their
        # tasks wait at the gate, which opens once they are cancelled.
        deadline = time.monotonic() + 60
        while {j["state"] for j in dummy_slurm.jobs() if j["job_id"] == earlier} != {"CANCELLED"}:
            assert time.monotonic() < deadline, "the earlier driver's jobs were not cancelled"
            assert resumed.poll() is None, resumed.stderr.read()
            time.sleep(0.05)
        gate.touch()
        out, err = resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert resumed.returncode == 0, err
    assert out.strip() == "[0, 10, 20]"


def test_real_slurm_map_larger_than_max_array_size(real_slurm, tmp_path):
    limit = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    max_array_size = int(limit.split("MaxArraySize")[1].split("=")[1].split()[0])
    assert max_array_size <= 101, "ci/slurm sets MaxArraySize=101 so that this test stays short"
    # One task past the largest array: the split's boundary, at the fewest jobs that need it.
    tasks = max_array_size + 1
    pool = pp.SlurmArrayPool(keep_work_dir=True, **FAST)
    assert pool.map(plus_one, range(tasks), chunksize=1) == list(range(1, tasks + 1))
    submitted = [e for e in events_of(tmp_path) if e["event"] == "submitted"]
    assert len(submitted) == 2  # split into two arrays
    assert sorted(c for e in submitted for c in e["members"]) == list(range(tasks))
