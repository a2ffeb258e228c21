"""Fault injection: error states, vanishing, time-outs, misbehaving commands."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from dq_helpers import file_text, run, wait_for

FMT = "--format=%i|%T|%r"


def rows() -> dict[str, list[str]]:
    out = run("squeue", "--noheader", "--array", "--states=all", FMT).stdout
    return {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines()}


def sbatch(*args: str) -> int:
    res = run("sbatch", "--parsable", *args)
    assert res.returncode == 0, res.stderr
    return int(res.stdout)


def test_error_state_counts_down_across_resubmissions(dummy_slurm, tmp_path):
    dummy_slurm.inject_error_state(task=1, count=2)
    jid = sbatch("--job-name=e", f"--output={tmp_path}/%a", "--array=0-2", "--wrap=echo ok")
    assert dummy_slurm.wait_idle(10)
    assert rows()[f"{jid}_1"] == ["PENDING", "launch failed requeued held"]
    assert not (tmp_path / "1").exists() and file_text(tmp_path / "0") == "ok\n"
    run("scancel", f"{jid}_1")
    assert f"{jid}_1" not in rows()
    again = sbatch("--job-name=e", f"--output={tmp_path}/%a", "--array=1", "--wrap=echo ok")
    assert dummy_slurm.wait_idle(10)
    assert rows()[f"{again}_1"][0] == "PENDING"  # second occurrence
    run("scancel", f"{again}_1")
    third = sbatch("--job-name=e", f"--output={tmp_path}/%a", "--array=1", "--wrap=echo ok")
    wait_for(lambda: file_text(tmp_path / "1") == "ok\n")
    assert dummy_slurm.wait_idle(10) and rows()[f"{third}_1"][0] == "COMPLETED"


def test_error_state_by_name_with_admin_reason(dummy_slurm, tmp_path):
    dummy_slurm.inject_error_state(name="victim*", reason="JobHeldAdmin")
    a = sbatch("--job-name=victim_1", f"--output={tmp_path}/a", "--wrap=true")
    b = sbatch("--job-name=other", f"--output={tmp_path}/b", "--wrap=true")
    assert dummy_slurm.wait_idle(10)
    assert rows()[str(a)] == ["PENDING", "JobHeldAdmin"]
    assert rows()[str(b)][0] == "COMPLETED"


def test_vanish_shows_node_fail_and_writes_nothing(dummy_slurm, tmp_path):
    dummy_slurm.inject_vanish(task=0)
    jid = sbatch(f"--output={tmp_path}/%a", "--array=0-1", "--wrap=echo x")
    assert dummy_slurm.wait_idle(10)
    assert rows()[f"{jid}_0"] == ["NODE_FAIL", "NodeDown"]
    assert not (tmp_path / "0").exists()
    assert run("squeue", "--noheader", "--array", FMT).stdout == ""


def test_timeout_kills_job(dummy_slurm, tmp_path):
    dummy_slurm.inject_timeout(0.3, task=0)
    jid = sbatch(f"--output={tmp_path}/%a", "--array=0", "--wrap=echo start; sleep 30")
    wait_for(lambda: rows()[f"{jid}_0"][0] == "TIMEOUT", what="TIMEOUT")
    assert rows()[f"{jid}_0"] == ["TIMEOUT", "TimeLimit"]
    assert "DUE TO TIME LIMIT" in file_text(tmp_path / "0")


def test_slow_element_runs_longer_than_its_command(dummy_slurm, tmp_path):
    dummy_slurm.inject_slow(1.0, task=0, count=1)
    jid = sbatch("--job-name=s", f"--output={tmp_path}/%a", "--array=0-1", "--wrap=echo ok")
    assert dummy_slurm.wait_idle(20)
    took = {j["task"]: j["end"] - j["start"] for j in dummy_slurm.jobs() if j["job_id"] == jid}
    assert took[0] >= 1.0 > took[1]
    assert file_text(tmp_path / "0") == "ok\n"  # slow, but it ran


def test_sge_timeout_and_vanish_just_disappear(dummy_sge, tmp_path):
    dummy_sge.inject_vanish(task=2)
    dummy_sge.inject_timeout(0.2, task=1)
    res = run("qsub", "-terse", "-N", "v", "-b", "y", "-j", "y", "-o", str(tmp_path),
              "-t", "1-3", "sleep 30")
    jid = res.stdout.split(".")[0]
    def states() -> dict:
        return {j["task"]: j["state"] for j in dummy_sge.jobs()}
    wait_for(lambda: states()[1] == "TIMEOUT" and states()[3] == "RUNNING")
    assert states()[2] == "VANISHED"
    xml = run("qstat", "-xml").stdout
    assert "<tasks>3</tasks>" in xml and "<tasks>1</tasks>" not in xml
    assert "<tasks>2</tasks>" not in xml
    run("qdel", jid)


@pytest.mark.parametrize("command,argv,rc,message", [
    ("sbatch", ["--wrap=true"], 1, "sbatch: error: Batch job submission failed: Unable to "
                                   "contact slurm controller (connect failure)"),
    ("squeue", [], 1, "slurm_load_jobs error: Unable to contact slurm controller "
                      "(connect failure)"),
])
def test_command_fail_for_k_calls(dummy_slurm, tmp_path, command, argv, rc, message):
    dummy_slurm.inject_command_failure(command, times=2)
    for _ in range(2):
        res = run(command, *argv, cwd=tmp_path)  # a job's default output lands in its cwd
        assert (res.returncode, res.stderr.strip(), res.stdout) == (rc, message, "")
    assert run(command, *argv, cwd=tmp_path).returncode == 0
    # the failed calls did nothing: only the third sbatch submitted a job
    assert len(dummy_slurm.submissions) == (1 if command == "sbatch" else 0)
    assert len(dummy_slurm.calls_to(command)) == 3


def test_lose_id_creates_job_but_prints_nothing(dummy_slurm, tmp_path):
    dummy_slurm.inject_command_failure("sbatch", mode="lose_id")
    res = run("sbatch", "--parsable", "--job-name=lost", f"--output={tmp_path}/o", "--wrap=true")
    assert res.returncode != 0 and res.stdout == ""
    assert [s["name"] for s in dummy_slurm.submissions] == ["lost"]
    wait_for(lambda: file_text(tmp_path / "o") == "" and (tmp_path / "o").exists())


def test_late_job_shows_and_runs_only_after_its_delay(dummy_sge, tmp_path):
    dummy_sge.inject_command_failure("qsub", mode="late", seconds=1.0)
    res = run("qsub", "-terse", "-N", "late", "-b", "y", "-o", str(tmp_path), "true")
    assert res.returncode == 1 and "failed receiving gdi request" in res.stderr
    assert run("qstat", "-xml").stdout.count("<job_list") == 0  # not yet: listings miss it
    assert len(dummy_sge.submissions) == 1 and not dummy_sge.jobs()
    wait_for(lambda: run("qstat", "-xml") and dummy_sge.jobs(), what="the late job")
    assert dummy_sge.wait_idle(10)
    assert [j["state"] for j in dummy_sge.jobs()] == ["COMPLETED"]


def test_garbled_output(dummy_slurm):
    dummy_slurm.inject_command_failure("squeue", mode="garble")
    res = run("squeue", "--noheader", FMT)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1
    assert "garbled" in res.stdout
    assert run("squeue", "--noheader", FMT).stdout == ""


def test_hang_is_bounded_and_longer_than_caller_timeout(dummy_slurm):
    dummy_slurm.inject_command_failure("squeue", mode="hang", seconds=30)
    hanging = subprocess.Popen(["squeue"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: dummy_slurm.state()["hanging"])  # it took the fault and hangs now
    with pytest.raises(subprocess.TimeoutExpired):
        hanging.wait(timeout=0.5)
    assert run("squeue").returncode == 0  # the lock was not held while hanging
    hanging.kill()
    hanging.wait()
    dummy_slurm.inject_command_failure("squeue", mode="hang", seconds=0.2)
    res = run("squeue")
    assert res.returncode == 1 and "Unable to contact slurm controller" in res.stderr


def test_sge_and_pbs_command_failures(dummy_sge, tmp_path):
    dummy_sge.inject_command_failure("qstat")
    res = run("qstat", "-xml")
    assert res.returncode == 1 and "commlib error" in res.stderr
    dummy_sge.inject_command_failure("qsub", mode="lose_id")
    res = run("qsub", "-terse", "-b", "y", "-o", str(tmp_path), "true")
    assert res.returncode == 1 and res.stdout == "" and len(dummy_sge.submissions) == 1


def test_state_file_is_valid_json_under_concurrency(dummy_slurm, tmp_path):
    procs = [subprocess.Popen(["sbatch", "--parsable", f"--output={tmp_path}/%j",
                               "--array=0-3", "--wrap=true"], stdout=subprocess.PIPE)
             for _ in range(6)]
    procs += [subprocess.Popen(["squeue", "-h", "-r", "-t", "all"], stdout=subprocess.PIPE)
              for _ in range(6)]
    deadline = time.monotonic() + 30
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        json.loads(open(dummy_slurm.state_path).read())  # never half-written
    assert all(p.wait(timeout=30) == 0 for p in procs)
    assert dummy_slurm.wait_idle(20)
    assert len([j for j in dummy_slurm.jobs() if j["state"] == "COMPLETED"]) == 24
