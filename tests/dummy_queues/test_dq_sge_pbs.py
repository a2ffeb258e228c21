"""The fake Grid Engine and PBS Pro."""
from __future__ import annotations

import getpass
import json
import os
import sys
import xml.etree.ElementTree as ET

import pytest

from dq_helpers import file_text, max_overlap, run, wait_for

PY = sys.executable
SCRIPT = "import os\nprint(os.environ.get('{var}'), os.environ.get('MY_VAR'), os.getcwd())\n"


def test_sge_array_env_output_and_no_inherited_env(dummy_sge, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_VAR", "leaked")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(var="SGE_TASK_ID"))
    res = run("qsub", "-terse", "-N", "arr", "-S", PY, "-o",
              f"{tmp_path}/$JOB_NAME.$JOB_ID.$TASK_ID", "-j", "y", "-wd", str(tmp_path),
              "-t", "1-3", str(script))
    assert res.returncode == 0, res.stderr
    jid, rng = res.stdout.strip().split(".")
    assert rng == "1-3:1"
    for task in (1, 2, 3):
        text = wait_for(lambda: file_text(tmp_path / f"arr.{jid}.{task}"))
        assert text == f"{task} None {tmp_path}\n"  # MY_VAR not inherited without -V
    res = run("qsub", "-terse", "-V", "-N", "plain", "-S", PY, "-o", str(tmp_path), "-j", "y",
              "-wd", str(tmp_path), str(script))
    assert res.stdout.strip().isdigit()
    out = tmp_path / f"plain.o{res.stdout.strip()}"
    assert wait_for(lambda: file_text(out)) == f"undefined leaked {tmp_path}\n"


def test_sge_qstat_xml_and_plain_layout(dummy_sge, tmp_path):
    dummy_sge.set_limits(slots=1)
    run("qsub", "-N", "a_very_long_job_name", "-b", "y", "-o", str(tmp_path), "sleep 30")
    run("qsub", "-N", "arr", "-b", "y", "-o", str(tmp_path), "-t", "1-10", "true")
    run("qsub", "-N", "held", "-h", "-b", "y", "-o", str(tmp_path), "true")
    root = ET.fromstring(run("qstat", "-xml", "-u", getpass.getuser()).stdout)
    running = root.findall("./queue_info/job_list")
    pending = root.findall("./job_info/job_list")
    assert [(j.get("state"), j.findtext("JB_name"), j.findtext("state")) for j in running] == [
        ("running", "a_very_long_job_name", "r")]
    assert [(j.get("state"), j.findtext("state"), j.findtext("tasks")) for j in pending] == [
        ("pending", "qw", "1-10:1"), ("pending", "hqw", None)]
    assert [c.tag for c in running[0]] == ["JB_job_number", "JAT_prio", "JB_name", "JB_owner",
                                           "state", "JAT_start_time", "queue_name", "slots"]
    lines = run("qstat").stdout.splitlines()
    assert lines[0].startswith("job-ID  prior   name       user         state submit/start at")
    assert lines[1] == "-" * 113
    assert lines[2].split()[2] == "a_very_lon" and lines[2].split()[4] == "r"
    assert len(lines[2]) == 110 and lines[3].endswith(" 1 1-10:1 ")
    run("qdel", "1", "2", "3")
    assert run("qstat").stdout == ""


def test_sge_throttle(dummy_sge, tmp_path):
    run("qsub", "-N", "tc", "-b", "y", "-o", str(tmp_path), "-t", "1-6", "-tc", "2", "sleep 0.2")
    assert dummy_sge.wait_idle(20)
    assert max_overlap([(j["start"], j["end"]) for j in dummy_sge.jobs()]) <= 2


def test_sge_eqw_qstat_j_and_qdel(dummy_sge, tmp_path):
    dummy_sge.inject_error_state(task=2)
    jid = run("qsub", "-terse", "-N", "e", "-b", "y", "-o", str(tmp_path), "-t", "1-3",
              "true").stdout.split(".")[0]
    assert dummy_sge.wait_idle(10)
    (eqw,) = ET.fromstring(run("qstat", "-xml").stdout).findall("./job_info/job_list")
    assert (eqw.findtext("state"), eqw.findtext("tasks")) == ("Eqw", "2")
    detail = run("qstat", "-j", jid)
    assert detail.returncode == 0
    assert any(line.startswith("error reason    2:") for line in detail.stdout.splitlines())
    res = run("qdel", jid, "-t", "2")
    assert res.stdout.strip() == f"{getpass.getuser()} has deleted job-array task {jid}.2"
    gone = run("qstat", "-j", jid)
    assert gone.returncode == 1 and gone.stderr.startswith("Following jobs do not exist:")
    res = run("qdel", "12345")
    assert (res.returncode, res.stderr.strip()) == (1, 'denied: job "12345" does not exist')


def test_sge_limits_and_unknown_option(dummy_sge, tmp_path):
    dummy_sge.set_limits(max_array_size=5, max_jobs_per_user=1)
    res = run("qsub", "-b", "y", "-t", "1-6", "true")
    assert res.returncode == 1 and "more than 5 tasks" in res.stderr
    assert run("qsub", "-h", "-b", "y", "-o", str(tmp_path), "true").returncode == 0
    res = run("qsub", "-b", "y", "true")
    assert res.returncode == 1 and "Only 1 jobs are allowed per user" in res.stderr
    res = run("qsub", "-frobnicate", "-b", "y", "true")
    assert res.returncode != 0 and 'invalid option argument "-frobnicate"' in res.stderr


def test_pbs_array_env_and_json(dummy_pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_VAR", "leaked")
    monkeypatch.chdir(tmp_path)
    res = run("qsub", "-N", "pj", "-o", f"{tmp_path}/o.^array_index^", "-j", "oe", "-J", "0-2",
              "--", PY, "-c", "import os;print(os.environ['PBS_JOBID'],"
              "os.environ['PBS_ARRAY_INDEX'],os.environ.get('MY_VAR'),"
              "os.environ['PBS_O_WORKDIR'])")
    assert res.returncode == 0 and res.stdout == "1[].pbsserver\n"
    for i in range(3):
        assert wait_for(lambda: file_text(tmp_path / f"o.{i}")) == \
            f"1[{i}].pbsserver {i} None {tmp_path}\n"
    assert dummy_pbs.wait_idle(10)
    live = json.loads(run("qstat", "-t", "-f", "-F", "json").stdout)
    assert "Jobs" not in live and live["pbs_server"] == "pbsserver"
    doc = json.loads(run("qstat", "-t", "-f", "-F", "json", "-x", "1[].pbsserver").stdout)
    jobs = doc["Jobs"]
    assert jobs["1[].pbsserver"]["job_state"] == "F"
    sub = jobs["1[2].pbsserver"]
    assert (sub["job_state"], sub["Exit_status"], sub["array_index"], sub["Job_Name"]) == \
        ("X", 0, 2, "pj")
    res = run("qstat", "-t", "-f", "-F", "json", "1[].pbsserver")
    assert res.returncode == 35 and "Job has finished" in res.stderr


def test_pbs_plain_job_error_state_and_qdel(dummy_pbs, tmp_path):
    dummy_pbs.inject_error_state(name="bad")
    res = run("qsub", "-N", "bad", "-o", f"{tmp_path}/o", "-j", "oe", "--", "/bin/true")
    assert res.stdout == "1.pbsserver\n"
    doc = json.loads(run("qstat", "-t", "-f", "-F", "json", "1.pbsserver").stdout)
    assert doc["Jobs"]["1.pbsserver"]["job_state"] == "H"
    assert run("qdel", "1.pbsserver").returncode == 0
    res = run("qdel", "77.pbsserver")
    assert res.returncode != 0 and "Unknown Job Id 77.pbsserver" in res.stderr
    res = run("qsub", "-J", "3-3", "--", "/bin/true")
    assert res.returncode == 2 and res.stderr.startswith("qsub: illegal -J value")
    res = run("qsub", "-Z", "--", "/bin/true")
    assert res.returncode == 2 and "invalid option" in res.stderr


def test_pbs_qselect_lists_ids_by_name_and_qstat_full_refuses_u(dummy_pbs, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # where PBS puts the stderr files of jobs without -e
    me = getpass.getuser()
    for argv in (["-J", "0-1"], [], ["-h"]):
        run("qsub", "-N", "sel", "-o", str(tmp_path), *argv, "--", "/bin/true")
    run("qsub", "-N", "other", "-o", str(tmp_path), "--", "/bin/true")
    assert dummy_pbs.wait_idle(10)
    res = run("qselect", "-N", "sel", "-u", me, "-x")
    assert (res.returncode, res.stdout) == (0, "1[].pbsserver\n2.pbsserver\n3.pbsserver\n")
    assert run("qselect", "-N", "sel", "-u", me).stdout == "3.pbsserver\n"  # -x: finished too
    assert run("qselect", "-N", "sel", "-x", "-T", "-J").stdout.split() == [
        "1[].pbsserver", "1[0].pbsserver", "1[1].pbsserver"]
    assert run("qselect", "-N", "nosuch", "-x").stdout == ""
    # -u belongs to the alternate displays: with -f the real qstat prints a table, not JSON
    res = run("qstat", "-f", "-F", "json", "-x", "-u", me)
    assert res.returncode == 2 and "[-u user]" in res.stderr and res.stdout == ""
    dummy_pbs.inject_command_failure("qselect")
    res = run("qselect", "-N", "sel")
    assert res.returncode != 0 and "cannot connect to server" in res.stderr


def test_sge_qdel_by_job_name(dummy_sge, tmp_path):
    for name in ("mine", "mine", "other"):
        run("qsub", "-N", name, "-h", "-b", "y", "-o", str(tmp_path), "/bin/true")
    res = run("qdel", "mine")
    assert res.returncode == 0 and res.stdout.count("has deleted job") == 2
    assert sorted(j["state"] for j in dummy_sge.jobs()) == ["CANCELLED", "CANCELLED", "HELD"]
    res = run("qdel", "mine")
    assert res.returncode == 1 and 'denied: job "mine" does not exist' in res.stderr


@pytest.mark.parametrize("scheduler", ["slurm", "sge", "pbs"])
def test_install_writes_executable_scripts(tmp_path, scheduler):
    import dummy_queues
    from dummy_queues._queue import COMMANDS
    q = dummy_queues.install(tmp_path / "bin", scheduler=scheduler)
    assert q.state()["scheduler"] == scheduler and os.path.exists(q.state_path)
    for name in COMMANDS[scheduler]:
        path = tmp_path / "bin" / name
        assert os.access(path, os.X_OK)
        assert path.read_text().startswith(f"#!{sys.executable}\n")
