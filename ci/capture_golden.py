"""Capture golden samples of the real schedulers' output into tests/golden/ (run as root on a
machine where ci/bringup-all.sh has started SLURM and Grid Engine):

    python ci/capture_golden.py

Each sample is the exact command line the pools run, with a JSON file of the job records the
parser needs to read it. The jobs are cancelled afterwards.
"""
from __future__ import annotations

import getpass
import json
import subprocess
import time
import uuid
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("the sample's states did not appear in time")
        time.sleep(0.2)


def slurm() -> None:
    name = f"ppgold{uuid.uuid4().hex[:6]}"
    fmt = "%i|%F|%K|%T|%r"
    squeue = ["squeue", "--noheader", "--array", "--states=all", f"--user={getpass.getuser()}",
              f"--name={name}", f"--format={fmt}"]
    array = run("sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null", "--array=0-9%3",
                "--wrap=case $SLURM_ARRAY_TASK_ID in 0) exit 0;; 1) exit 3;; *) sleep 30;; esac").strip()
    held = run("sbatch", "--parsable", "-H", f"--job-name={name}", "--output=/dev/null", "--wrap=true").strip()
    wait_for(lambda: "FAILED" in run(*squeue) and "RUNNING" in run(*squeue))
    out = GOLDEN / "slurm"
    out.mkdir(parents=True, exist_ok=True)
    (out / "squeue_states.txt").write_text(run(*squeue))
    (out / "squeue_command.txt").write_text(" ".join(squeue) + "\n")
    jobs = [{"job_id": array, "chunks": list(range(10)), "array": True, "offset": 0},
            {"job_id": held, "chunks": [10], "array": False}]
    (out / "squeue_jobs.json").write_text(json.dumps(jobs, indent=1) + "\n")
    (out / "scontrol_show_config.txt").write_text(run("scontrol", "show", "config"))
    subprocess.run(["scancel", array, held], check=True)


def sge() -> None:
    name = f"ppgold{uuid.uuid4().hex[:6]}"
    array = run("qsub", "-terse", "-N", name, "-b", "y", "-o", "/dev/null", "-j", "y",
                "-t", "1-6", "-tc", "2", "/bin/sleep", "30").strip().split(".")[0]
    held = run("qsub", "-terse", "-h", "-N", name, "-b", "y", "-o", "/dev/null", "-j", "y",
               "/bin/true").strip()
    qstat = ["qstat", "-xml", "-u", getpass.getuser()]
    wait_for(lambda: run(*qstat).count("state=\"running\"") >= 2)
    out = GOLDEN / "sge"
    out.mkdir(parents=True, exist_ok=True)
    (out / "qstat_xml_states.xml").write_text(run(*qstat))
    (out / "qstat_command.txt").write_text(" ".join(qstat) + "\n")
    jobs = [{"job_id": array, "chunks": list(range(6)), "array": True, "offset": 0},
            {"job_id": held, "chunks": [6], "array": False}]
    (out / "qstat_jobs.json").write_text(json.dumps({"job_name": name, "jobs": jobs}, indent=1) + "\n")
    subprocess.run(["qdel", array, held], capture_output=True)


if __name__ == "__main__":
    slurm()
    sge()
    print(f"golden samples written under {GOLDEN}")
