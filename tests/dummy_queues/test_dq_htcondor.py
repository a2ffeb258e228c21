"""The fake HTCondor: submit descriptions (macros, both queue forms, the new arguments and
environment syntax), condor_q and condor_history ads with the keys of the samples written
from the manual (tests/golden/htcondor/), holds (stuck, over memory, over time), late
materialization, condor_rm."""
from __future__ import annotations

import json
from pathlib import Path

from dq_helpers import file_text, max_overlap, run, wait_for

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "htcondor"
ATTRS = "ClusterId,ProcId,JobStatus,HoldReason,HoldReasonCode,ExitCode,ExitBySignal,ExitSignal"


def submit(tmp_path: Path, *lines: str, queue: str = "queue 1") -> str:
    path = tmp_path / "job.submit"
    path.write_text("\n".join(["executable = /bin/sh", "getenv = false", "batch_name = dq",
                               *lines, queue]) + "\n")
    res = run("condor_submit", "-terse", str(path))
    assert res.returncode == 0, res.stderr
    first, _, last = res.stdout.strip().partition(" - ")
    assert first.endswith(".0") and last.split(".")[0] == first.split(".")[0]
    return first.split(".")[0]


def ads(command: str, *extra: str) -> list[dict]:
    res = run(command, "-json", "-attributes", ATTRS, *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout) if res.stdout.strip() else []


def test_procs_get_their_macros_and_only_the_environment_line(dummy_htcondor, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("MY_VAR", "leaked")
    out = tmp_path / "out.$(Process)"
    cluster = submit(tmp_path, f"initialdir = {tmp_path}", f"output = {out}",
                     """arguments = "-c 'printf ''[%s]'' $X $MY_VAR ''a  b''; echo; pwd'" """.strip(),
                     'environment = "X=$(Cluster).$(Process)"', queue="queue 2")
    for proc in (0, 1):
        text = wait_for(lambda: file_text(tmp_path / f"out.{proc}"), what=f"proc {proc}")
        assert text == f"[{cluster}.{proc}][a  b]\n{tmp_path}\n"  # no MY_VAR: getenv false
    items = submit(tmp_path, f"output = {tmp_path}/item.$(Chunk)", 'arguments = "-c true"',
                   queue="queue Chunk in (4 9)")
    wait_for(lambda: (tmp_path / "item.9").exists() and (tmp_path / "item.4").exists())
    assert dummy_htcondor.wait_idle(10)
    assert {(a["ClusterId"], a["ProcId"], a["JobStatus"], a["ExitCode"])
            for a in ads("condor_history")} == {
        (int(cluster), 0, 4, 0), (int(cluster), 1, 4, 0), (int(items), 0, 4, 0),
        (int(items), 1, 4, 0)}
    assert ads("condor_q") == []  # ended jobs leave the queue, and condor_q prints nothing


def test_ads_have_the_keys_of_the_samples_and_exit_codes(dummy_htcondor, tmp_path):
    submit(tmp_path, """arguments = "-c 'exit 3'" """)
    killed = submit(tmp_path, """arguments = "-c 'kill -9 $(DOLLAR)$(DOLLAR)'" """)
    assert dummy_htcondor.wait_idle(10)
    history = {a["ClusterId"]: a for a in ads("condor_history")}
    golden = {a["ProcId"]: a for a in json.loads((GOLDEN / "condor_history_json.json").read_text())}
    assert set(history[int(killed) - 1]) == set(golden[6])  # exit 3
    assert history[int(killed) - 1]["ExitCode"] == 3
    assert set(history[int(killed)]) == set(golden[7])  # killed by a signal
    assert (history[int(killed)]["ExitBySignal"], history[int(killed)]["ExitSignal"]) == (True, 9)


def test_held_procs_materialization_and_condor_rm(dummy_htcondor, tmp_path):
    dummy_htcondor.inject_error_state(task=1)
    held = submit(tmp_path, 'arguments = "-c true"', queue="queue 2")
    listed = wait_for(lambda: [a for a in ads("condor_q", held) if a["JobStatus"] == 5])
    golden = json.loads((GOLDEN / "condor_q_json.json").read_text())[2]
    assert set(listed[0]) == set(golden) and listed[0]["HoldReasonCode"] == 6
    assert "Failed to execute" in listed[0]["HoldReason"]
    gone = run("condor_rm", f"{held}.1")
    assert (gone.returncode, gone.stdout.strip()) == (0, f"Job {held}.1 marked for removal")
    again = run("condor_rm", f"{held}.1")
    assert (again.returncode, again.stderr.strip()) == (1, f"Job {held}.1 not found")

    slow = submit(tmp_path, """arguments = "-c 'sleep 0.3'" """, "max_materialize = 2",
                  queue="queue 5")
    assert dummy_htcondor.wait_idle(20)
    procs = [j for j in dummy_htcondor.jobs() if str(j["job_id"]) == slow]
    assert len(procs) == 5 and max_overlap([(j["start"], j["end"]) for j in procs]) <= 2

    queued = submit(tmp_path, """arguments = "-c 'sleep 30'" """, "max_materialize = 1",
                    queue="queue 3")
    factory = run("condor_q", "-factory", "-json", "-constraint", f"ClusterId == {queued}")
    assert json.loads(factory.stdout)[0]["JobMaterializeNextProcId"] == 1
    assert [a["ProcId"] for a in ads("condor_q", queued)] == [0]
    assert run("condor_rm", f"{queued}.2").returncode == 1  # not materialized: not a job yet
    whole = run("condor_rm", queued)  # the cluster: its factory too
    assert whole.stdout.strip() == f"All jobs in cluster {queued} have been marked for removal"
    assert {a["JobStatus"] for a in ads("condor_history", "-constraint",
                                        f"ClusterId == {queued}")} == {3}
    assert run("condor_rm", queued).returncode == 1


def test_refusals_and_constraints(dummy_htcondor, tmp_path):
    bad = tmp_path / "bad.submit"
    bad.write_text("executable = /no/such/program\nqueue\n")
    res = run("condor_submit", "-terse", str(bad))
    assert res.returncode == 1 and "does not exist" in res.stderr
    assert run("condor_submit", "-bogus", str(bad)).returncode != 0
    dummy_htcondor.set_limits(max_jobs_per_user=2)
    many = tmp_path / "many.submit"
    many.write_text("executable = /bin/true\nqueue 3\n")
    assert "MAX_JOBS_PER_OWNER" in run("condor_submit", "-terse", str(many)).stderr
    assert run("condor_q", "-json", "-constraint", "ClusterId ==").returncode != 0
    cluster = submit(tmp_path, 'arguments = "-c true"')
    assert dummy_htcondor.wait_idle(10)
    named = ads("condor_history", "-constraint",
                f'JobBatchName == "dq" && (ClusterId == {cluster} || ClusterId == 0)')
    assert [a["ClusterId"] for a in named] == [int(cluster)]


def test_holds_for_memory_and_for_time_carry_their_codes(dummy_htcondor, tmp_path):
    dummy_htcondor.inject_oom(task=0)
    over_memory = submit(tmp_path, 'arguments = "-c true"', "request_memory = 2GB")
    over_time = submit(tmp_path, """arguments = "-c 'sleep 30'" """, "allowed_execute_duration = 1")
    over_job = submit(tmp_path, """arguments = "-c 'sleep 30'" """, "allowed_job_duration = 1",
                      "allowed_execute_duration = 20")

    def all_held() -> dict[int, dict] | None:
        listed = run("condor_q", "-json", "-attributes", ATTRS + ",HoldReasonSubCode").stdout
        found = {a["ClusterId"]: a for a in json.loads(listed or "[]") if a["JobStatus"] == 5}
        return found if len(found) == 3 else None

    held = wait_for(all_held, what="three held procs")
    memory, time_, job = held[int(over_memory)], held[int(over_time)], held[int(over_job)]
    assert (memory["HoldReasonCode"], memory["HoldReasonSubCode"]) == (34, 102)
    assert "over cgroup memory limit of 2048 megabytes" in memory["HoldReason"]
    assert (time_["HoldReasonCode"], time_["HoldReason"]) == (
        47, "The job exceeded allowed execute duration of 00:01")
    assert (job["HoldReasonCode"], job["HoldReason"]) == (
        46, "The job exceeded allowed job duration of 00:01")
    assert not any(j["state"] == "RUNNING" for j in dummy_htcondor.jobs())  # the held are stopped
