"""The dummy schedulers speak like the real ones: the same submissions, run against the fake and
against the real scheduler (when one answers), read the same way by the pools' parsers.

Plus golden samples captured from the real tools (tests/golden/), parsed offline everywhere.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from poolparty_raster.schedulers.base import SubmitSpec, TaskState, TaskStatus
from poolparty_raster.schedulers.sge import SgeScheduler, parse_qstat_xml
from poolparty_raster.schedulers.slurm import SlurmScheduler, parse_squeue

GOLDEN = Path(__file__).parent / "golden"

# exit code per array element: 0 -> COMPLETED, 3 -> FAILED (SLURM)
EXITS = [0, 3, 0]


def _spec(tmp_path: Path, name: str) -> SubmitSpec:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit $(( $1 ))\n")
    return SubmitSpec(work_dir=str(tmp_path), script_path=str(script), python_path="/bin/sh",
                      job_name=name, scheduler_log=str(tmp_path / "sched.log"), cwd=str(tmp_path))


def _settled(poll, deadline: float):
    """Poll (bounded) until every element has left the queue's pending and running states."""
    while True:
        statuses = poll()
        if statuses and all(s.state is TaskState.FINISHED for s in statuses.values()):
            return statuses
        assert time.monotonic() < deadline, f"jobs did not finish: {statuses}"
        time.sleep(0.2)


def slurm_run(tmp_path: Path) -> dict[int, tuple[str, str]]:
    scheduler = SlurmScheduler()
    spec = _spec(tmp_path, f"ppconf{uuid.uuid4().hex[:6]}")
    exits = " ".join(str(e) for e in EXITS)
    # The element's exit code comes from its index, so one array gives COMPLETED and FAILED.
    job_id = scheduler.submitter.submit(spec, [
        "sbatch", "--parsable", f"--job-name={spec.job_name}", f"--output={spec.scheduler_log}",
        "--array=0-2", f"--wrap=set -- {exits}; shift $SLURM_ARRAY_TASK_ID; exit $1"])
    jobs = [{"job_id": job_id, "chunks": [0, 1, 2], "array": True, "offset": 0}]
    statuses = _settled(lambda: scheduler.poll(spec, jobs), time.monotonic() + 60)
    return {chunk: (s.state.value, s.reason.split()[0]) for (_, chunk), s in statuses.items()}


def sge_run(tmp_path: Path) -> dict[int, tuple[str, str]]:
    """Grid Engine drops finished tasks: compare what a held array looks like instead."""
    scheduler = SgeScheduler(qsub_args=["-h"])
    spec = _spec(tmp_path, f"ppconf{uuid.uuid4().hex[:6]}")
    records = list(scheduler.submit(spec, [0, 1, 2]))
    try:
        statuses = scheduler.poll(spec, records)
    finally:
        scheduler.cancel(spec, records)
    return {chunk: (s.state.value, s.reason) for (_, chunk), s in statuses.items()}


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_dummy_and_real_scheduler_read_the_same(scheduler, request, tmp_path):
    run = {"slurm": slurm_run, "sge": sge_run}[scheduler]
    request.getfixturevalue(f"real_{scheduler}")
    (tmp_path / "real").mkdir()
    real = run(tmp_path / "real")
    request.getfixturevalue(f"dummy_{scheduler}")  # now first on PATH
    (tmp_path / "dummy").mkdir()
    dummy = run(tmp_path / "dummy")
    assert dummy == real
    if scheduler == "slurm":
        assert real == {0: ("finished", "COMPLETED"), 1: ("finished", "FAILED"), 2: ("finished", "COMPLETED")}
    else:
        assert real == {0: ("pending", "hqw"), 1: ("pending", "hqw"), 2: ("pending", "hqw")}


def test_golden_squeue_sample_parses():
    """Captured from SLURM 22.05 by ci/capture_golden.py: an array with a throttle, and a held job."""
    text = (GOLDEN / "slurm" / "squeue_states.txt").read_text()
    jobs = json.loads((GOLDEN / "slurm" / "squeue_jobs.json").read_text())
    statuses = {chunk: s for (_, chunk), s in parse_squeue(text, jobs).items()}
    assert statuses[0].state is TaskState.FINISHED and statuses[0].reason.startswith("COMPLETED")
    assert statuses[1].state is TaskState.FINISHED and statuses[1].reason.startswith("FAILED")
    assert statuses[2].state is TaskState.RUNNING
    assert statuses[9] == TaskStatus(TaskState.PENDING, "JobArrayTaskLimit")
    assert statuses[10] == TaskStatus(TaskState.PENDING, "JobHeldUser")  # the non-array job
    assert len(statuses) == 11


def test_golden_qstat_xml_sample_parses():
    """Captured from Son of Grid Engine 8.1.9: a throttled array (running, transferring,
    pending as a range) and a held job."""
    text = (GOLDEN / "sge" / "qstat_xml_states.xml").read_text()
    sample = json.loads((GOLDEN / "sge" / "qstat_jobs.json").read_text())
    statuses = {chunk: s for (_, chunk), s in
                parse_qstat_xml(text, sample["job_name"], sample["jobs"]).items()}
    assert sorted(statuses) == list(range(7))
    assert statuses[0].state is TaskState.RUNNING and statuses[1].state is TaskState.RUNNING
    assert all(statuses[c].state is TaskState.PENDING for c in range(2, 6))
    assert statuses[6] == TaskStatus(TaskState.PENDING, "hqw")


SHAPES = {
    "slurm": ([["sbatch", "--bogus"], ["sbatch", "-Z"],
               ["sbatch", "--parsable", "--hold", "--job-name={name}", "--wrap=true"],
               ["sbatch", "--parsable", "--hold", "--job-name={name}", "--array=0-2", "--wrap=true"]],
              ["scancel", "--name={name}"]),
    "sge": ([["qsub", "-bogus"], ["qsub", "-terse", "-h", "-N", "{name}", "-b", "y", "/bin/true"],
             ["qsub", "-terse", "-h", "-N", "{name}", "-t", "1-3", "-b", "y", "/bin/true"]],
            ["qdel", "{name}"]),
}


def answers(scheduler: str, cwd: Path) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each command, numbers replaced by N (held jobs: should
    one run anyway, its default output file lands in ``cwd``)."""
    commands, clean_up = SHAPES[scheduler]
    name = f"ppshape{uuid.uuid4().hex[:6]}"
    out = []
    try:
        for argv in commands:
            done = subprocess.run([a.format(name=name) for a in argv], capture_output=True,
                                  text=True, timeout=60, cwd=cwd)
            out.append((done.returncode, re.sub(r"\d+", "N", done.stdout), done.stderr))
    finally:
        subprocess.run([a.format(name=name) for a in clean_up], capture_output=True, timeout=60)
    return out


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_dummy_and_real_scheduler_answer_submissions_alike(scheduler, request, tmp_path):
    """Ids as sbatch --parsable and qsub -terse print them (4, 18.1-10:1), and the messages
    and exit codes of flags the tool does not know."""
    request.getfixturevalue(f"real_{scheduler}")
    real = answers(scheduler, tmp_path)
    request.getfixturevalue(f"dummy_{scheduler}")
    assert answers(scheduler, tmp_path) == real
