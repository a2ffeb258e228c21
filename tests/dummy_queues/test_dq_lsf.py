"""The fake LSF: bsub arrays and environments, bjobs' formats (the same keys as the samples
written from IBM's reference in tests/golden/lsf/), PSUSP, the run and memory limits with their
termination reasons, bkill; and an LSF before 10.1, whose bjobs has no -json, with LsfPool
reading its delimited lines."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import pytest
from dq_helpers import file_text, max_overlap, run, wait_for

from poolparty_raster import LsfPool
from poolparty_raster.errors import SchedulerOutputError
from poolparty_raster.schedulers import lsf

cloudpickle.register_pickle_by_value(sys.modules[__name__])
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "lsf"
FIELDS = lsf.BJOBS_FIELDS  # what LsfPool asks for


def bsub(*args: str, cwd=None) -> str:
    res = run("bsub", *args, cwd=cwd)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Job <") and res.stdout.strip().endswith("> is submitted to queue <normal>.")
    return res.stdout.split("<")[1].split(">")[0]


def records(*extra: str) -> list[dict[str, str]]:
    res = run("bjobs", "-a", "-json", "-o", FIELDS, *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["RECORDS"]


def test_array_elements_get_their_index_and_no_environment_with_env_none(dummy_lsf, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("MY_VAR", "leaked")
    line = "echo $LSB_JOBID $LSB_JOBINDEX $LSB_JOBNAME $MY_VAR; pwd"
    jid = bsub("-J", "env[1-3]", "-o", f"{tmp_path}/%J.%I.out", "-env", "none", line, cwd=tmp_path)
    for index in (1, 2, 3):
        text = wait_for(lambda: file_text(tmp_path / f"{jid}.{index}.out"))
        assert text == f"{jid} {index} env[{index}]\n{tmp_path}\n"  # started where submitted
    plain = bsub("-J", "plain", "-oo", f"{tmp_path}/plain.out", "echo $MY_VAR", cwd=tmp_path)
    assert wait_for(lambda: file_text(tmp_path / "plain.out")) == "leaked\n"  # LSF's default: all
    assert dummy_lsf.wait_idle(10)
    assert {(r["JOBID"], r["STAT"], r["JOB_NAME"]) for r in records()} == {
        (jid, "DONE", "env[1]"), (jid, "DONE", "env[2]"), (jid, "DONE", "env[3]"),
        (plain, "DONE", "plain")}


def test_bjobs_json_has_the_keys_of_the_documented_sample(dummy_lsf, tmp_path):
    bsub("-J", "keys[1-2]", "-o", str(tmp_path / "log"), "exit 3")
    assert dummy_lsf.wait_idle(10)
    golden = json.loads((GOLDEN / "bjobs_json_states.json").read_text())
    listed = json.loads(run("bjobs", "-a", "-json", "-o", FIELDS, "-J", "keys").stdout)
    assert listed.keys() == golden.keys() and listed["JOBS"] == 2
    assert [set(r) for r in listed["RECORDS"]] == [set(golden["RECORDS"][0])] * 2
    assert {r["STAT"] + r["EXIT_CODE"] for r in listed["RECORDS"]} == {"EXIT3"}


def test_throttle_psusp_run_limit_and_bkill(dummy_lsf, tmp_path):
    log = str(tmp_path / "log")
    jid = bsub("-J", "tc[1-6]%2", "-o", log, "sleep 0.2")
    assert dummy_lsf.wait_idle(20)
    assert max_overlap([(j["start"], j["end"]) for j in dummy_lsf.jobs()
                        if str(j["job_id"]) == jid]) <= 2
    dummy_lsf.inject_error_state(task=2)
    held = bsub("-J", "held[1-2]", "-o", log, "true")
    wait_for(lambda: [r for r in records("-J", "held") if r["STAT"] == "PSUSP"])
    (psusp,) = [r for r in records("-J", "held") if r["STAT"] == "PSUSP"]
    assert psusp["JOB_NAME"] == "held[2]" and "suspended by LSF admin" in psusp["PEND_REASON"]
    kill = run("bkill", f"{held}[2]")
    assert kill.returncode == 0 and kill.stdout.strip() == f"Job <{held}[2]> is being terminated"
    again = run("bkill", f"{held}[2]")
    assert again.returncode == 255 and "Job has already finished" in again.stderr
    dummy_lsf.inject_timeout(0.3)
    bsub("-J", "limited", "-o", log, "sleep 30")
    wait_for(lambda: [r for r in records("-J", "limited") if r["STAT"] == "EXIT"])
    (limited,) = records("-J", "limited")
    assert limited["EXIT_CODE"] == "140" and limited["EXIT_REASON"].startswith("TERM_RUNLIMIT: ")


def test_a_memory_kill_exits_with_lsf_s_termination_reason(dummy_lsf, tmp_path):
    dummy_lsf.inject_oom(task=2)
    bsub("-J", "mem[1-2]", "-M", "1GB", "-o", str(tmp_path / "log"), "exit 3")
    assert dummy_lsf.wait_idle(10)
    by_name = {r["JOB_NAME"]: r for r in records("-J", "mem")}
    assert (by_name["mem[2]"]["STAT"], by_name["mem[2]"]["EXIT_CODE"]) == ("EXIT", "137")
    assert by_name["mem[2]"]["EXIT_REASON"] == (
        "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit")
    assert by_name["mem[1]"]["EXIT_REASON"] == ""  # its own exit: no termination reason


def test_kill_by_name_nothing_found_and_refusals(dummy_lsf, tmp_path):
    bsub("-J", "many[1-3]", "-o", str(tmp_path / "log"), "sleep 30")
    wait_for(lambda: [r for r in records("-J", "many") if r["STAT"] == "RUN"])
    assert run("bkill", "-J", "many", "0").returncode == 0
    assert {r["STAT"] for r in records("-J", "many")} == {"EXIT"}
    none = run("bjobs", "-J", "many")  # without -a: nothing unfinished
    assert (none.returncode, none.stderr.strip()) == (255, "No unfinished job found")
    assert run("bkill", "-J", "many", "0").stderr.strip() == "No unfinished job found"
    dummy_lsf.set_limits(max_array_size=5, max_jobs_per_user=2)
    too_big = run("bsub", "-J", "big[1-6]", "true")
    assert (too_big.returncode, too_big.stderr.strip()) == (
        255, "Job array index too large. Job not submitted.")
    assert "threshold reached" in run("bsub", "-J", "pend[1-3]", "true").stderr
    assert run("bsub", "-x", "true").stderr.startswith("bsub: illegal option -- x")
    conf = run("badmin", "showconf", "mbd").stdout
    assert "    MAX_JOB_ARRAY_SIZE = 5" in conf.splitlines()


# -- an LSF before 10.1: no bjobs -json -------------------------------------------------
TEXT_FORMAT = f"{FIELDS} delimiter='^'"
LSF_JOBS = [{"job_id": "1234", "chunks": list(range(10, 20)), "array": True, "offset": 9},
            {"job_id": "1240", "chunks": [10], "array": True, "offset": 9}]


def test_an_old_lsf_refuses_json_and_prints_the_sample_s_delimited_lines(dummy_lsf, tmp_path):
    dummy_lsf.set_limits(lsf_json=False)
    refused = run("bjobs", "-a", "-json", "-o", FIELDS)
    assert refused.returncode == 255 and "illegal option" in refused.stderr
    jid = bsub("-J", "old[1-2]", "-o", str(tmp_path / "log"), "exit 3")
    assert dummy_lsf.wait_idle(10)
    listed = run("bjobs", "-a", "-noheader", "-o", TEXT_FORMAT, "-J", "old")
    sample = (GOLDEN / "bjobs_noheader_states.txt").read_text().splitlines()
    assert listed.stdout.splitlines() == [f"{jid}^EXIT^old[1]^3^-^-", f"{jid}^EXIT^old[2]^3^-^-"]
    assert {line.count("^") for line in sample + listed.stdout.splitlines()} == {5}


def test_the_delimited_lines_read_as_the_json_records_do():
    text = lsf.read_text_records((GOLDEN / "bjobs_noheader_states.txt").read_text(), FIELDS)
    from_json = lsf.parse_bjobs_json((GOLDEN / "bjobs_json_states.json").read_text(), LSF_JOBS)
    assert lsf.parse_bjobs_records(text, LSF_JOBS) == from_json
    # the pending reason is last: it may hold the delimiter
    (odd,) = lsf.read_text_records("1^PEND^pp[1]^-^-^a ^ b", FIELDS)
    assert odd["PEND_REASON"] == "a ^ b" and odd["EXIT_CODE"] == ""
    with pytest.raises(SchedulerOutputError, match="could not parse"):
        lsf.read_text_records("1^PEND", FIELDS)


def plus_one(x):
    return x + 1


def test_lsf_pool_on_an_old_lsf_reads_the_delimited_listing(dummy_lsf, tmp_path):
    dummy_lsf.set_limits(lsf_json=False)
    dummy_lsf.inject_command_failure("bsub", mode="lose_id")  # adopted through the listing
    dummy_lsf.inject_error_state(task=2)  # PSUSP, read from a line: killed and resubmitted
    pool = LsfPool(polling_interval=0.3, filesystem_lag=0.3, progress=False)
    assert pool.map(plus_one, range(4), chunksize=1) == [1, 2, 3, 4]
    listings = [c["argv"] for c in dummy_lsf.calls_to("bjobs")]
    assert sum("-json" in argv for argv in listings) == 1  # asked once, then never again
    assert all("-noheader" in argv for argv in listings if "-json" not in argv)
    assert len(dummy_lsf.submissions) == 2 and dummy_lsf.calls_to("bkill")
