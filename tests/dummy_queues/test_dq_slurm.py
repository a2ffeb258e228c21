"""The fake SLURM: formats, arrays, caps, scancel."""
from __future__ import annotations

import getpass
import json
import subprocess

import pytest

from dq_helpers import file_text, max_overlap, run, wait_for

FMT = "--format=%i|%F|%K|%T|%r"


def squeue(*extra: str) -> list[list[str]]:
    res = run("squeue", "--noheader", "--array", "--states=all", FMT, *extra)
    assert res.returncode == 0, res.stderr
    return [line.split("|") for line in res.stdout.splitlines()]


def sbatch(*args: str, cwd=None) -> int:
    res = run("sbatch", "--parsable", *args, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


def test_array_runs_by_itself_with_slurm_env(dummy_slurm, tmp_path):
    jid = sbatch("--job-name=env", f"--output={tmp_path}/%A_%a.out", "--array=0-3",
                 "--wrap=echo $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_JOB_ID "
                 "$SLURM_JOB_NAME $SLURM_ARRAY_TASK_COUNT $MY_VAR; pwd", cwd=tmp_path)
    calls = len(dummy_slurm.calls)
    outs = [tmp_path / f"{jid}_{t}.out" for t in range(4)]
    wait_for(lambda: all(file_text(p).count("\n") == 2 for p in outs), what="outputs")
    job_ids = set()
    for task, path in enumerate(outs):
        first, cwd = file_text(path).splitlines()
        a, t, j, name, count = first.split()
        assert (a, t, name, count) == (str(jid), str(task), "env", "4")
        assert cwd == str(tmp_path)
        job_ids.add(j)
    assert len(job_ids) == 4  # SLURM_JOB_ID is distinct per element
    assert len(dummy_slurm.calls) == calls  # nothing needed another command call
    assert dummy_slurm.wait_idle(10)
    assert {row[3] for row in squeue()} == {"COMPLETED"}
    assert run("squeue", "--noheader", "--array", FMT).stdout == ""  # finished leave the listing


def test_caller_environment_is_exported(dummy_slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_VAR", "exported")
    sbatch("--job-name=x", f"--output={tmp_path}/o", "--wrap=echo $MY_VAR")
    assert wait_for(lambda: file_text(tmp_path / "o")) == "exported\n"


def test_squeue_fields_states_and_reasons(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(slots=1)
    long = sbatch("--job-name=long", f"--output={tmp_path}/l", "--wrap=sleep 30")
    arr = sbatch("--job-name=arr", f"--output={tmp_path}/a", "--array=3,7%1", "--wrap=true")
    held = sbatch("--job-name=held", "-H", f"--output={tmp_path}/h", "--wrap=true")
    rows = {r[0]: r for r in squeue()}
    assert rows[str(long)] == [str(long), str(long), "N/A", "RUNNING", "None"]
    assert rows[f"{arr}_3"] == [f"{arr}_3", str(arr), "3", "PENDING", "Resources"]
    assert rows[f"{arr}_7"][3:] == ["PENDING", "Resources"]
    assert rows[str(held)][3:] == ["PENDING", "JobHeldUser"]
    res = run("squeue", "--name=arr", "--format=%i %t %u %j")  # header, collapsed pending tasks
    assert res.stdout.splitlines() == ["JOBID ST USER NAME",
                                       f"{arr}_[3,7%1] PD {getpass.getuser()} arr"]
    res = run("squeue", "-h", "-o", "%.8i|%-6t|")
    assert f"{long:>8}|R     |" in res.stdout.splitlines()
    run("scancel", str(long))
    wait_for(lambda: any(r[0] == f"{arr}_3" and r[3] == "RUNNING" or r[3] == "COMPLETED"
                         for r in squeue() if r[0] == f"{arr}_3"), what="arr_3 started")
    assert {r[0]: r[3] for r in squeue()}[str(long)] == "CANCELLED"
    run("scancel", str(held))


def test_throttle_and_slots_cap_running(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(slots=3)
    sbatch("--job-name=t", f"--output={tmp_path}/%a", "--array=0-5%2", "--wrap=sleep 0.2")
    sbatch("--job-name=u", f"--output={tmp_path}/u%a", "--array=0-5", "--wrap=sleep 0.2")
    assert dummy_slurm.wait_idle(30)
    jobs = dummy_slurm.jobs()
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    spans = {name: [(j["start"], j["end"]) for j in jobs if j["name"] == name] for name in "tu"}
    assert max_overlap(spans["t"]) <= 2
    assert max_overlap(spans["t"] + spans["u"]) <= 3


def test_throttle_reason_shown(dummy_slurm, tmp_path):
    jid = sbatch("--job-name=thr", f"--output={tmp_path}/%a", "--array=0-2%1", "--wrap=sleep 30")
    rows = {r[0]: r[3:] for r in squeue()}
    assert rows[f"{jid}_0"] == ["RUNNING", "None"]
    assert rows[f"{jid}_1"] == ["PENDING", "JobArrayTaskLimit"]
    assert run("scancel", "--name=thr", f"--user={getpass.getuser()}").returncode == 0
    assert {r[3] for r in squeue()} == {"CANCELLED"}


@pytest.mark.parametrize("spec,tasks", [("0-4", [0, 1, 2, 3, 4]), ("3,7,12", [3, 7, 12]),
                                        ("3,7,12%2", [3, 7, 12]), ("5", [5]),
                                        ("0-6:3", [0, 3, 6])])
def test_array_specs(spec, tasks):
    from dummy_queues.slurm import parse_array
    assert parse_array(spec, 1001)[0] == tasks


def test_max_array_size_and_config(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(max_array_size=10, max_job_count=500)
    cfg = run("scontrol", "show", "config").stdout.splitlines()
    assert "MaxArraySize            = 10" in cfg and "MaxJobCount             = 500" in cfg
    res = run("sbatch", "--parsable", "--array=0-10", "--wrap=true")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == ("sbatch: error: Batch job submission failed: "
                          "Invalid job array specification\n")
    assert run("sbatch", "--parsable", "--array=0-9", "--wrap=true", cwd=tmp_path).returncode == 0
    assert len(dummy_slurm.submissions) == 1


def test_per_user_submit_cap(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(max_jobs_per_user=3)
    sbatch("-H", "--array=0-1", "--wrap=true", f"--output={tmp_path}/o")
    res = run("sbatch", "--parsable", "-H", "--array=0-1", "--wrap=true")
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
        "(job submit limit, user's size and/or time limits)")
    sbatch("-H", "--wrap=true", f"--output={tmp_path}/o")


def test_concurrent_sbatch_get_distinct_ids(dummy_slurm, tmp_path):
    procs = [subprocess.Popen(["sbatch", "--parsable", "-H", "--job-name=c", "--wrap=true"],
                              stdout=subprocess.PIPE, text=True) for _ in range(20)]
    ids = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert len(set(ids)) == 20
    state = json.loads(open(dummy_slurm.state_path).read())
    assert len(state["jobs"]) == 20 and len(dummy_slurm.submissions) == 20


def test_failed_job_and_missing_output_dir(dummy_slurm, tmp_path):
    bad = sbatch("--job-name=bad", f"--output={tmp_path}/o", "--wrap=exit 3")
    nodir = sbatch("--job-name=nodir", f"--output={tmp_path}/no/such/o", "--wrap=true")
    assert dummy_slurm.wait_idle(10)
    rows = {r[0]: r[3:] for r in squeue()}
    assert rows[str(bad)] == ["FAILED", "NonZeroExitCode"]
    assert rows[str(nodir)] == ["FAILED", "JobLaunchFailure"]


def test_scancel_pending_element_vanishes_running_is_cancelled(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(slots=1)
    jid = sbatch(f"--output={tmp_path}/o%a", "--array=0-2", "--wrap=sleep 30")
    assert run("scancel", f"{jid}_2", "424242").returncode == 0  # unknown ids are fine
    assert [r[0] for r in squeue()] == [f"{jid}_0", f"{jid}_1"]
    run("scancel", f"{jid}_0")
    rows = {r[0]: r[3] for r in squeue()}
    assert rows[f"{jid}_0"] == "CANCELLED"
    wait_for(lambda: {r[0]: r[3] for r in squeue()}[f"{jid}_1"] == "RUNNING")
    run("scancel", str(jid))
    assert {r[3] for r in squeue()} == {"CANCELLED"}


def test_finished_jobs_purged_after_min_job_age(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(min_job_age=0)
    sbatch(f"--output={tmp_path}/o", "--wrap=true")
    wait_for(lambda: squeue() == [], what="purge")


def test_sinfo_cpus(dummy_slurm, tmp_path):
    dummy_slurm.set_limits(slots=3)
    assert run("sinfo", "--noheader", "--format=%C").stdout == "0/3/0/3\n"
    sbatch(f"--output={tmp_path}/o", "--wrap=sleep 30")
    assert run("sinfo", "--noheader", "--format=%C").stdout == "1/2/0/3\n"


@pytest.mark.parametrize("argv", [["sbatch", "--bogus", "--wrap=true"],
                                  ["squeue", "--frobnicate"], ["squeue", "--format=%i|%Y"],
                                  ["scancel", "--nope", "1"], ["scontrol", "show", "job"],
                                  ["sinfo", "--what"], ["sbatch", "--array=1-x", "--wrap=t"]])
def test_unknown_flags_rejected(dummy_slurm, argv):
    res = run(*argv)
    assert res.returncode != 0 and res.stderr and res.stdout == ""
