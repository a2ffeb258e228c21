"""HTCondorPool: the parsers on samples of HTCondor's output (tests/golden/htcondor/, written
from the HTCondor manual: no HTCondor runs here; cluster 4321 holds chunks 10-19, cluster 4400
is a throttled resubmission of chunks 3, 7 and 8 whose proc 2 is not materialized yet), the
submit description, and what only HTCondor does on the dummy: held jobs (stuck, or over their
memory or time), late materialization, clusters of scattered chunks, set-up lines."""
from __future__ import annotations

import os
import shlex
import stat
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from dummy_queues._condor_syntax import expand, parse_submit, split_new_syntax
from poolparty_raster.errors import SchedulerOutputError, TaskLostError
from poolparty_raster.pools.htcondor import HTCondorPool
from poolparty_raster.schedulers import htcondor
from poolparty_raster.schedulers.base import SubmitSpec, TaskState, TaskStatus
from workdirlog import log_events

cloudpickle.register_pickle_by_value(sys.modules[__name__])

GOLDEN = Path(__file__).with_name("golden") / "htcondor"
FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}
JOBS = [{"job_id": "4321", "chunks": list(range(10, 20)), "array": True},
        {"job_id": "4400", "chunks": [3, 7, 8], "array": True, "throttle": 2}]


def golden_ads(name: str) -> list[dict]:
    return htcondor.read_ads((GOLDEN / name).read_text(), name)


def test_every_job_status_of_the_samples_is_read_for_its_chunk():
    statuses = htcondor.parse_ads(golden_ads("condor_q_json.json"),
                                  golden_ads("condor_history_json.json"),
                                  golden_ads("condor_q_factory_json.json"), JOBS)
    states = {key: status.state for key, status in statuses.items()}
    assert states == {
        ("4321", 10): TaskState.RUNNING, ("4321", 11): TaskState.PENDING,
        ("4321", 12): TaskState.ERROR, ("4321", 13): TaskState.RUNNING,
        ("4321", 14): TaskState.RUNNING, ("4321", 15): TaskState.FINISHED,
        ("4321", 16): TaskState.FINISHED, ("4321", 17): TaskState.FINISHED,
        ("4321", 18): TaskState.FINISHED,
        ("4400", 3): TaskState.PENDING,  # listed idle
        ("4400", 8): TaskState.PENDING,  # not materialized: not a job yet, not gone
    }  # 4321's 19 and 4400's 7 are in no listing: gone
    assert "cgroup memory limit" in statuses[("4321", 12)].reason
    assert "HoldReasonCode 34" in statuses[("4321", 12)].reason
    assert statuses[("4321", 12)].exceeded == "mem"  # follows the kill policy, not resubmitted
    assert [statuses[("4321", c)].succeeded for c in (15, 16, 17, 18)] == [True, False, False, False]
    assert statuses[("4321", 17)].reason == "completed, killed by signal 9"
    assert "PeriodicRemove" in statuses[("4321", 18)].reason


@pytest.mark.parametrize("hold, exceeded", [
    ({"HoldReasonCode": 34, "HoldReasonSubCode": 102}, "mem"),
    ({"HoldReasonCode": 34}, "mem"),                          # before HTCondor 24: no subcode
    ({"HoldReasonCode": 34, "HoldReasonSubCode": 104}, None),  # its disk: not a request here
    ({"HoldReasonCode": 47}, "time"), ({"HoldReasonCode": 46}, "time"),
    ({"HoldReasonCode": 1}, None), ({"HoldReasonCode": 6, "HoldReasonSubCode": 2}, None)])
def test_holds_for_memory_and_time_are_told_apart(hold, exceeded):
    ad = {"ClusterId": 4321, "ProcId": 0, "JobStatus": 5, "HoldReason": "x", **hold}
    status = htcondor.parse_ads([ad], [], [], JOBS)[("4321", 10)]
    assert (status.state, status.exceeded) == (TaskState.ERROR, exceeded)


def test_the_history_wins_for_a_job_that_left_the_queue_between_the_two_queries():
    running = {"ClusterId": 4321, "ProcId": 0, "JobStatus": 2}
    done = {"ClusterId": 4321, "ProcId": 0, "JobStatus": 4, "ExitCode": 0, "ExitBySignal": False}
    assert htcondor.parse_ads([running], [done], [], JOBS)[("4321", 10)] == TaskStatus(
        TaskState.FINISHED, "completed, exit code 0", True)


def test_unreadable_listings_are_refused_and_nothing_listed_is_nothing():
    with pytest.raises(SchedulerOutputError, match="could not parse"):
        htcondor.parse_ads([{"ClusterId": 4321, "ProcId": 0, "JobStatus": 9}], [], [], JOBS)
    with pytest.raises(SchedulerOutputError, match="could not parse"):
        htcondor.read_ads("-- Failed to fetch ads", "condor_q")
    with pytest.raises(SchedulerOutputError, match="could not parse"):
        htcondor.read_ads('{"ClusterId": 1}', "condor_q")
    assert htcondor.read_ads("", "condor_q") == [] and htcondor.read_ads("[]", "condor_q") == []


def test_submission_answers():
    assert htcondor.parse_cluster_id((GOLDEN / "condor_submit_terse.txt").read_text()) == "4321"
    assert htcondor.parse_cluster_id("Submitting job(s)..........\n"
                                     "10 job(s) submitted to cluster 4321.\n") == "4321"
    assert htcondor.parse_cluster_id("ERROR: Failed to commit job submission") is None


@pytest.mark.parametrize("stderr, kind", [
    ("ERROR: Can't find address of local schedd", "transient"),
    ("CEDAR:6001:Failed to connect to <127.0.0.1:9618>", "transient"),
    ("ERROR: Failed to commit job submission into the queue.", "answer_lost"),
    ("ERROR: Failed to queue job. Number of submitted jobs would exceed MAX_JOBS_PER_OWNER", "limit"),
    ("ERROR: on Line 3 of submit file: Parse error", "permanent"),
    ("something else entirely", "unknown")])
def test_failures_are_told_apart(stderr, kind):
    assert htcondor.classify_refusal(stderr) == kind


def test_arguments_survive_the_submit_syntax():
    assert htcondor.quote_argument("it's \"x\"") == "'it''s \"\"x\"\"'"
    assert htcondor.escape_macros("/data/$(HOME)/w") == "/data/$(DOLLAR)(HOME)/w"


def test_a_work_dir_of_awkward_characters_reaches_the_shell_unchanged():
    work_dir = "/data/it's a \"map\" $(HOME) $x"
    spec = SubmitSpec(work_dir, f"{work_dir}/script.py", "/usr/bin/python3", "ppabc",
                      f"{work_dir}/scheduler.log")
    commands, queue = parse_submit(htcondor.submit_description(spec, [4, 5], None, []))
    macros = {"DOLLAR": "$", "HOME": "/wrong"}
    arguments = split_new_syntax(expand(commands["arguments"], macros), "arguments")
    assert arguments == ["-c", f"exec >>{shlex.quote(spec.scheduler_log)} 2>&1; " + shlex.join(
        ["exec", "/usr/bin/python3", spec.script_path, "--env", "POOLPARTY_RASTER_CHUNK",
         "--offset", "4"])]
    assert expand(commands["initialdir"], macros) == work_dir and queue == [2, None, None]


def test_a_queue_statement_or_a_request_in_submit_lines_is_refused():
    with pytest.raises(ValueError, match="queue statement"):
        HTCondorPool(submit_lines=["queue 3"])
    with pytest.raises(ValueError, match="set request_memory= as the pool's option"):
        HTCondorPool(submit_lines=["request_memory=4GB"])  # a retry could not enlarge it
    with pytest.raises(ValueError, match="set allowed_execute_duration="):
        HTCondorPool(retry_resources={"time": 2.0})


def plus_one(x):
    return x + 1


def test_the_submit_description_carries_the_options_and_none_of_the_environment(
        dummy_htcondor, monkeypatch):
    monkeypatch.setenv("MY_SECRET_TOKEN", "hunter2")
    seen = []
    pool = HTCondorPool(request_cpus=2, request_memory="3GB", request_disk="1GB",
                        requirements='(OpSys == "LINUX")', accounting_group="group_physics",
                        submit_lines=["+ProjectName = \"survey\""], **FAST)
    submitter = pool._scheduler.submitter
    submit = submitter.submit

    def watching(spec, argv):  # the file as condor_submit finds it
        seen.append((os.stat(argv[-1]).st_mode, Path(argv[-1]).read_text()))
        return submit(spec, argv)

    monkeypatch.setattr(submitter, "submit", watching)
    assert pool.map(plus_one, range(4), chunksize=1) == [1, 2, 3, 4]
    ((mode, text),) = seen
    assert stat.S_IMODE(mode) == 0o600 and "hunter2" not in text
    commands = dummy_htcondor.submissions[0]["commands"]
    assert commands["getenv"] == "false" and commands["should_transfer_files"] == "NO"
    assert commands["environment"] == '"POOLPARTY_RASTER_CHUNK=$(Process)"'
    assert (commands["request_cpus"], commands["request_memory"], commands["request_disk"],
            commands["requirements"], commands["accounting_group"], commands["+projectname"]) == (
        "2", "3GB", "1GB", '(OpSys == "LINUX")', "group_physics", '"survey"')
    assert dummy_htcondor.submissions[0]["queue"] == [4, None, None]
    assert not os.path.exists(dummy_htcondor.submissions[0]["argv"][-1])  # removed once submitted


def test_a_held_job_is_removed_and_its_chunk_runs_again_with_the_hold_reason_kept(
        dummy_htcondor, tmp_path):
    dummy_htcondor.inject_error_state(task=1, count=1)
    pool = HTCondorPool(keep_work_dir=True, work_dir=str(tmp_path / "w"), **FAST)
    assert pool.map(plus_one, range(4), chunksize=1) == [1, 2, 3, 4]
    (held,) = [e for e in log_events(tmp_path / "w") if e["event"] == "error_state"]
    assert held["chunk"] == 1 and "Failed to execute" in held["reason"]
    # the held proc alone (a leftover of the map may be removed at its end)
    removed = dummy_htcondor.calls_to("condor_rm")[0]["argv"]
    assert removed == [f"{dummy_htcondor.submissions[0]['job_id']}.1"]
    # the resubmission: the one chunk, a cluster of one proc
    assert dummy_htcondor.submissions[1]["queue"] == [1, None, None]


def naps(x):
    time.sleep(1.5)  # the last proc waits 4.5 s to be materialized: longer than a loss takes
    return x


def test_procs_waiting_for_materialization_are_pending_not_lost(dummy_htcondor, tmp_path):
    pool = HTCondorPool(num_simultaneously_running_tasks=1, keep_work_dir=True,
                        work_dir=str(tmp_path / "w"), **FAST)
    assert pool.map(naps, range(4), chunksize=1) == list(range(4))
    assert len(dummy_htcondor.submissions) == 1
    assert dummy_htcondor.submissions[0]["commands"]["max_materialize"] == "1"
    assert not [e for e in log_events(tmp_path / "w") if e["event"] == "lost"]
    assert dummy_htcondor.calls_to("condor_q") and any(
        "-factory" in c["argv"] for c in dummy_htcondor.calls_to("condor_q"))


def test_scattered_chunks_run_again_as_one_cluster_of_items(dummy_htcondor):
    dummy_htcondor.inject_vanish(task=1, count=1)
    dummy_htcondor.inject_vanish(task=3, count=1)
    assert HTCondorPool(**FAST).map(plus_one, range(6), chunksize=1) == list(range(1, 7))
    assert [s["queue"] for s in dummy_htcondor.submissions] == [
        [6, None, None], [1, "PoolpartyChunk", ["1", "3"]]]


# -- holds for memory and time follow the kill policy ------------------------------------------


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def submitted(queue, command: str) -> list[str | None]:
    """The value of ``command`` in each submit description the dummy received, in order."""
    return [s["commands"].get(command) for s in queue.submissions]


def test_a_memory_hold_fails_its_chunk_at_once_and_leaves_nothing_held(dummy_htcondor):
    dummy_htcondor.inject_oom(task=1, count=1)  # held, HoldReasonCode 34
    pool = HTCondorPool(request_memory="1GB", **FAST)
    with pytest.raises(TaskLostError) as lost:
        pool.map(plus_one, range(3), chunksize=1)
    message = str(lost.value)
    assert lost.value.task_indices == [1]
    assert "killed at its memory request and not resubmitted" in message
    assert "raise request_memory=" in message and "retry_resources" in message
    assert "gone over cgroup memory limit of 1024 megabytes" in message
    assert "asked for request_memory=1GB" in message
    assert submitted(dummy_htcondor, "request_memory") == ["1GB"]  # not resubmitted
    assert not [j for j in dummy_htcondor.jobs() if j["state"] == "ERROR"]  # removed


def test_a_memory_hold_is_resubmitted_with_the_doubled_request_when_asked(dummy_htcondor):
    dummy_htcondor.inject_oom(task=0, count=1)
    pool = HTCondorPool(request_memory="1GB", retry_resources={"mem": 2.0}, **FAST)
    assert pool.map(plus_one, range(2), chunksize=1) == [1, 2]
    assert submitted(dummy_htcondor, "request_memory") == ["1GB", "2GB"]
    assert dummy_htcondor.submissions[1]["queue"] == [1, None, None]  # the held chunk alone


def test_a_wall_time_hold_fails_its_chunk_at_once(dummy_htcondor):
    pool = HTCondorPool(allowed_execute_duration=1, **FAST)  # held (47) after 1 s
    with pytest.raises(TaskLostError) as lost:
        pool.map(sleep_then_return, [0, 30], chunksize=1)
    message = str(lost.value)
    assert lost.value.task_indices == [1]
    assert "killed at its wall time request" in message and "raise allowed_execute_duration=" in message
    assert "exceeded allowed execute duration of 00:01 (HoldReasonCode 47)" in message
    assert submitted(dummy_htcondor, "allowed_execute_duration") == ["1"]


def test_a_wall_time_hold_is_resubmitted_with_the_doubled_duration_when_asked(dummy_htcondor):
    pool = HTCondorPool(allowed_execute_duration=3, retry_resources={"time": 2.0}, **FAST)
    # 3 s is too short for a 3 s sleep (and the interpreter's start); 6 s is enough
    assert pool.map(sleep_then_return, [0, 3], chunksize=1) == [0, 3]
    assert submitted(dummy_htcondor, "allowed_execute_duration") == ["3", "6"]
