"""Wall-time and memory kills: a chunk killed at its request is not resubmitted unchanged
(the same request would die the same way); with ``retry_resources`` it is resubmitted with
the larger request, which the scheduler receives."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import poolparty_raster as pp
from poolparty_raster.attempts import next_request
from poolparty_raster.errors import TaskLostError
from poolparty_raster.schedulers.slurm import SlurmScheduler, classify
from workdirlog import log_events

FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}
OOM = "OutOfMemoryError: Container killed due to memory usage"


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def flag_values_joined(queue, flag: str) -> list[str]:
    """The value of each ``flag=value`` argument the dummy received, in order."""
    return [arg.split("=", 1)[1] for s in queue.submissions for arg in s["argv"]
            if arg.startswith(f"{flag}=")]


def sbatch_times(queue) -> list[str]:
    """The --time of each sbatch call the dummy received, in order."""
    return flag_values_joined(queue, "--time")


def test_slurm_end_states_say_which_request_ran_out():
    assert classify("TIMEOUT", "TimeLimit").exceeded == "time"
    assert classify("OUT_OF_MEMORY", "OutOfMemory").exceeded == "mem"
    assert classify("FAILED", "NonZeroExitCode").exceeded is None
    assert classify("NODE_FAIL", "NodeDown").exceeded is None


def test_each_backend_tells_its_own_kills_apart():
    from poolparty_raster.schedulers import awsbatch, ecsstatus, lsf, pbs, sge

    h_rt = "taskid 2\nfailed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit\nexit_status  137"
    assert sge.parse_qacct(h_rt).exceeded == "time"
    assert sge.parse_qacct("failed       0\nexit_status  1").exceeded is None
    assert sge.parse_qacct("") is None  # not in the accounting yet
    jobs = [{"job_id": "7.s", "chunks": [0], "array": False}]
    for code, exceeded in ((-29, "time"), (-27, "mem"), (-26, "mem"), (1, None), (-11, None)):
        text = json.dumps({"Jobs": {"7.s": {"job_state": "F", "Exit_status": code}}})
        assert pbs.parse_qstat_json(text, jobs)[("7.s", 0)].exceeded == exceeded
    assert lsf.classify("EXIT", "140", "").exceeded == "time"
    assert lsf.classify("EXIT", "1", "").exceeded is None
    batch_oom = {"jobId": "j", "status": "FAILED",
                 "container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed"}}
    assert awsbatch.classify_job(batch_oom).exceeded == "mem"
    stopped = {"lastStatus": "STOPPED", "containers": [{"exitCode": 137, "reason": OOM}]}
    assert ecsstatus.classify_task(stopped).exceeded == "mem"
    assert ecsstatus.classify_task({"lastStatus": "STOPPED", "containers": [{"exitCode": 1}]}).exceeded is None


def test_requests_scale_in_each_schedulers_format():
    from poolparty_raster.schedulers.jobcommand import scale_clock, scale_memory
    from poolparty_raster.schedulers.lsf import run_limit_scaled

    assert scale_clock("30", 2, 60) == "1:00:00"             # SLURM: minutes
    assert scale_clock("1-12", 2, 60) == "72:00:00"          # SLURM: days-hours
    assert scale_clock("0:45", 2, 60) == "0:01:30"           # SLURM: minutes:seconds
    assert scale_clock("3600", 1.5, 1) == "1:30:00"          # Grid Engine: seconds
    assert scale_clock("01:00:00", 2, 1) == "2:00:00"
    assert run_limit_scaled("1:30", 2) == "3:00"             # LSF: [hours:]minutes
    assert scale_memory("4G", 1.5) == "6G" and scale_memory("1000", 1.25) == "1250"
    with pytest.raises(ValueError, match="cannot read"):
        scale_clock("UNLIMITED", 2, 60)


def test_wall_time_kill_fails_the_chunk_at_once_naming_the_option(dummy_slurm):
    pool = pp.SlurmArrayPool(time="0:02", **FAST)  # the dummy kills at 2 s (SLURM: minutes)
    with pytest.raises(TaskLostError) as lost:
        pool.map(sleep_then_return, [0, 30], chunksize=1)
    message = str(lost.value)
    assert lost.value.task_indices == [1]
    assert "chunk 1 (tasks 1), 1 attempt(s), killed at its wall time request" in message
    assert "raise time=" in message and "retry_resources" in message
    assert "TIMEOUT" in message and "asked for time=0:02" in message
    assert sbatch_times(dummy_slurm) == ["0:02"]  # not resubmitted


def test_wall_time_kill_is_resubmitted_with_the_doubled_request(dummy_slurm):
    pool = pp.SlurmArrayPool(time="0:03", retry_resources={"time": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [0, 3], chunksize=1) == [0, 3]
    # 3 s is too short for a 3 s sleep (and the interpreter's start); 6 s is enough
    assert sbatch_times(dummy_slurm) == ["0:03", "0:00:06"]
    assert [len(s["tasks"]) for s in dummy_slurm.submissions] == [2, 1]  # chunk 1 alone


def test_the_callable_form_gives_each_attempts_request(dummy_slurm, tmp_path):
    seen = []

    def bigger(attempt: int, reason: str) -> dict[str, str]:
        seen.append((attempt, reason))
        return {"time": f"0:{attempt * 5:02d}"}

    pool = pp.SlurmArrayPool(time="0:01", retry_resources=bigger, work_dir=str(tmp_path / "w"),
                             keep_work_dir=True, **FAST)
    assert pool.map(sleep_then_return, [2.5], chunksize=1) == [2.5]
    assert seen == [(2, "time")]
    assert sbatch_times(dummy_slurm) == ["0:01", "0:10"]
    retries = [e for e in log_events(tmp_path / "w") if e["event"] == "retry_resources"]
    assert [(e["chunk"], e["exceeded"], e["request"]) for e in retries] == [(0, "time", {"time": "0:10"})]


def test_retries_stop_at_max_num_resubmissions(dummy_slurm):
    pool = pp.SlurmArrayPool(time="0:01", retry_resources={"time": 1.5},
                             max_num_resubmissions=1, **FAST)
    with pytest.raises(TaskLostError, match="attempt 1: TIMEOUT.*asked for time=0:01"):
        pool.map(sleep_then_return, [30], chunksize=1)
    assert sbatch_times(dummy_slurm) == ["0:01", "0:00:02"]


def test_simple_form_needs_a_request_to_multiply():
    with pytest.raises(ValueError, match="time="):
        pp.SlurmArrayPool(retry_resources={"time": 2.0})
    with pytest.raises(ValueError, match="factor above 1"):
        pp.SlurmArrayPool(time="1:00", retry_resources={"time": 0.5})
    with pytest.raises(ValueError, match="not one of"):
        pp.SlurmArrayPool(time="1:00", retry_resources={"walltime": 2.0})


def test_next_request_scales_the_last_attempts_request():
    slurm = SlurmScheduler(time="1:00:00", mem="4G")
    retry = {"time": 2.0, "mem": 1.5}
    assert next_request(retry, slurm, 2, "time", None) == {"time": "2:00:00"}
    assert next_request(retry, slurm, 3, "time", {"time": "2:00:00"}) == {"time": "4:00:00"}
    assert next_request(retry, slurm, 2, "mem", {"time": "2:00:00"}) == {"time": "2:00:00",
                                                                          "mem": "6G"}
    assert next_request(None, slurm, 2, "mem", None) is None
    assert next_request({"time": 2.0}, slurm, 2, "mem", None) is None  # memory: not asked
    with pytest.raises(ValueError, match="must return None or a dict"):
        next_request(lambda attempt, reason: {"walltime": "1"}, slurm, 2, "time", None)


def flag_values(queue, flag: str) -> list[str]:
    """The value after ``flag`` in each submission the dummy received, in order."""
    return [s["argv"][i + 1] for s in queue.submissions for i, arg in enumerate(s["argv"])
            if arg == flag]


def test_pbs_walltime_kill_is_resubmitted_with_the_doubled_walltime(dummy_pbs):
    pool = pp.PbsPool(walltime="0:0:3", retry_resources={"time": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [3], chunksize=1) == [3]  # Exit_status -29 once
    assert [v for v in flag_values(dummy_pbs, "-l") if v.startswith("walltime=")] == [
        "walltime=0:0:3", "walltime=0:00:06"]


def test_pbs_walltime_kill_fails_at_once_by_default(dummy_pbs):
    with pytest.raises(TaskLostError, match="raise walltime="):
        pp.PbsPool(walltime="0:0:1", **FAST).map(sleep_then_return, [30], chunksize=1)
    assert len(dummy_pbs.submissions) == 1


def test_lsf_run_limit_kill_is_resubmitted_with_the_doubled_limit(dummy_lsf):
    dummy_lsf.inject_timeout(0.5, count=1)  # TERM_RUNLIMIT (exit 140) after 0.5 s, once
    pool = pp.LsfPool(walltime="1", retry_resources={"time": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [2], chunksize=1) == [2]
    assert flag_values(dummy_lsf, "-W") == ["1", "0:02"]


def test_lsf_run_limit_kill_fails_at_once_by_default(dummy_lsf):
    dummy_lsf.inject_timeout(0.5, count=1)
    with pytest.raises(TaskLostError, match="raise walltime="):
        pp.LsfPool(walltime="1", **FAST).map(sleep_then_return, [2], chunksize=1)
    assert len(dummy_lsf.submissions) == 1


def qacct_categories(work_dir) -> list[str]:
    """The ``category`` (the -l requests) qacct recorded for each job of a map, in order."""
    jobs = [json.loads(line) for line in (work_dir / "jobs.jsonl").read_text().splitlines()]
    categories = []
    for job in jobs:
        text = subprocess.run(["qacct", "-j", job["job_id"]], capture_output=True, text=True).stdout
        categories += [line.split(None, 1)[1].strip() for line in text.splitlines()
                       if line.startswith("category")]
    return categories


def test_real_sge_h_rt_kill(real_sge, tmp_path):
    """Grid Engine kills at h_rt (qacct: failed 37); the retry asks for twice the h_rt."""
    with pytest.raises(TaskLostError, match="killed at its wall time request") as lost:
        pp.SgePool(resources=["h_rt=0:0:2"], **FAST).map(sleep_then_return, [30], chunksize=1)
    assert "qacct: failed 37" in str(lost.value) and "asked for h_rt=0:0:2" in str(lost.value)
    # Grid Engine enforces h_rt at its execd's checks, seconds late: a task 1 s over its limit
    # may finish unkilled. 10 s is well past 4 s and well within the retry's 16 s.
    pool = pp.SgePool(resources=["h_rt=0:0:4"], retry_resources={"time": 4.0},
                      work_dir=str(tmp_path / "w"), keep_work_dir=True, **FAST)
    assert pool.map(sleep_then_return, [10], chunksize=1) == [10]
    # qacct may list an ended job late: up to the accounting's flush time (ci/sge sets 0)
    deadline = time.monotonic() + 90
    while len(qacct_categories(tmp_path / "w")) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert qacct_categories(tmp_path / "w") == ["-l h_rt=4", "-l h_rt=16"]



def test_slurm_memory_kill_fails_the_chunk_at_once_naming_the_option(dummy_slurm):
    dummy_slurm.inject_oom(task=1, count=1)  # OUT_OF_MEMORY
    with pytest.raises(TaskLostError) as lost:
        pp.SlurmArrayPool(mem="1G", **FAST).map(sleep_then_return, [0, 0], chunksize=1)
    message = str(lost.value)
    assert lost.value.task_indices == [1]
    assert "killed at its memory request and not resubmitted: raise mem=" in message
    assert "OUT_OF_MEMORY" in message and "asked for mem=1G" in message
    assert flag_values_joined(dummy_slurm, "--mem") == ["1G"]  # not resubmitted


def test_slurm_memory_kill_is_resubmitted_with_the_doubled_request(dummy_slurm):
    dummy_slurm.inject_oom(task=0, count=1)
    pool = pp.SlurmArrayPool(mem="1G", retry_resources={"mem": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [0, 0], chunksize=1) == [0, 0]
    assert flag_values_joined(dummy_slurm, "--mem") == ["1G", "2G"]
    assert [len(s["tasks"]) for s in dummy_slurm.submissions] == [2, 1]  # chunk 0 alone


def test_pbs_memory_kill_fails_at_once_by_default(dummy_pbs):
    dummy_pbs.inject_oom(count=1)  # Exit_status -27
    with pytest.raises(TaskLostError, match="killed at its memory request.*raise mem="):
        pp.PbsPool(mem="1gb", **FAST).map(sleep_then_return, [0], chunksize=1)
    assert len(dummy_pbs.submissions) == 1


def test_pbs_memory_kill_is_resubmitted_with_the_doubled_mem(dummy_pbs):
    dummy_pbs.inject_oom(count=1)
    pool = pp.PbsPool(mem="1gb", retry_resources={"mem": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [0], chunksize=1) == [0]
    assert [v for v in flag_values(dummy_pbs, "-l") if v.startswith("mem=")] == [
        "mem=1gb", "mem=2gb"]


def test_batch_out_of_memory_is_resubmitted_with_more_memory(dummy_batch):
    from dummy_queues import aws

    dummy_batch.inject_stop(chunk=0, times=1, exit_code=137, reason=OOM)
    pool = pp.AwsBatchPool(memory=1024, retry_resources={"mem": 2.0}, **aws.pool_options("batch"),
                           **FAST)
    assert pool.map(sleep_then_return, [0], chunksize=1) == [0]
    memories = [r["value"] for params in dummy_batch.calls_to("SubmitJob")
                for r in params["containerOverrides"]["resourceRequirements"] if r["type"] == "MEMORY"]
    assert memories == ["1024", "2048"]


def test_ecs_out_of_memory_fails_at_once(dummy_ecs):
    from dummy_queues import aws

    dummy_ecs.inject_stop(chunk=0, times=1, stop_code="EssentialContainerExited",
                          stopped_reason="Essential container in task exited", exit_code=137,
                          reason=OOM)
    with pytest.raises(TaskLostError, match="killed at its memory request.*raise memory="):
        pp.EcsPool(**aws.pool_options("ecs"), **FAST).map(sleep_then_return, [0], chunksize=1)
    assert len(dummy_ecs.calls_to("RunTask")) == 1
    with pytest.raises(ValueError, match="cannot resubmit with a larger 'mem' request"):
        pp.EcsPool(**aws.pool_options("ecs"), retry_resources={"mem": 2.0})


def test_a_callable_returning_nothing_new_resubmits_unchanged(dummy_ecs):
    from dummy_queues import aws

    dummy_ecs.inject_stop(chunk=0, times=1, exit_code=137, reason=OOM)
    pool = pp.EcsPool(**aws.pool_options("ecs"), retry_resources=lambda attempt, reason: {}, **FAST)
    assert pool.map(sleep_then_return, [0], chunksize=1) == [0]
    assert len(dummy_ecs.calls_to("RunTask")) == 2


def test_sge_h_rt_kill_on_the_dummy(dummy_sge):
    with pytest.raises(TaskLostError, match="killed at its wall time request.*raise h_rt="):
        pp.SgePool(resources=["h_rt=1"], **FAST).map(sleep_then_return, [30], chunksize=1)
    pool = pp.SgePool(resources=["h_rt=3"], retry_resources={"time": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [3], chunksize=1) == [3]
    asked = [v for v in flag_values(dummy_sge, "-l") if v.startswith("h_rt=")]
    assert asked == ["h_rt=1", "h_rt=3", "h_rt=0:00:06"]
