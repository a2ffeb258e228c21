"""The command line on a SLURM map: status (its queued and running counts from squeue),
rerun, and cancelling the jobs of a driver that was killed; on the dummy SLURM, and the
status on the real one."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli, statusview
from poolparty_raster.debugging import open_work_dir
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fails_on_one(x):
    if x == 1:
        raise KeyError(x)
    return x + 100


def test_status_and_rerun_of_a_slurm_map_whose_task_raised(dummy_slurm, tmp_path):
    work_dir = str(tmp_path / "w")
    with pytest.raises(KeyError):
        pp.SlurmArrayPool(work_dir=work_dir, progress=False).map(fails_on_one, range(3), chunksize=1)
    shown = cli.status(work_dir)
    assert shown["tasks"] == {"done": 2, "raised": 1, "lost": 0, "pending": 0}
    submitted = {str(s["job_id"]) for s in dummy_slurm.submissions}
    assert {job["job_id"] for job in shown["jobs"]} == submitted
    with open_work_dir(work_dir) as kept:
        assert kept.rerun(2) == 102
        with pytest.raises(KeyError):
            kept.rerun(1)


DRIVER = textwrap.dedent("""
    import sys, time
    import poolparty_raster as pp

    def slow(x):
        time.sleep(300)
        return x

    if __name__ == "__main__":
        pp.SlurmArrayPool(work_dir=sys.argv[1], progress=False).map(slow, range(3), chunksize=1)
""")


def test_cancel_ends_the_jobs_of_a_killed_driver(dummy_slurm, tmp_path, monkeypatch):
    script, work_dir = tmp_path / "driver.py", tmp_path / "w"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not WorkDir(str(work_dir)).read_jobs():  # recorded: the array was accepted
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)  # no chance to cancel its own jobs
        driver.wait(30)
    job_name = WorkDir(str(work_dir)).read_manifest().job_name
    ours = [job for job in dummy_slurm.jobs() if job["name"] == job_name]
    assert ours and all(job["state"] in ("PENDING", "RUNNING") for job in ours)
    shown = cli.status(str(work_dir))
    assert shown["state"] == "stopped"
    # The dead driver's chunks, as squeue lists them: each queued or running.
    assert shown["scheduler"]["name"] == "slurm" and shown["scheduler"]["not_asked"] is None
    assert shown["scheduler"]["queued"] + shown["scheduler"]["running"] == 3
    dummy_slurm.inject_command_failure("squeue", times=2, mode="fail")
    assert cli.main(["status", str(work_dir)]) == 0  # the status says so, and does not fail
    unanswered = cli.status(str(work_dir))["scheduler"]
    assert unanswered["queued"] is None and "slurm did not answer" in unanswered["not_asked"]
    with monkeypatch.context() as without_slurm:
        without_slurm.setenv("PATH", str(tmp_path / "nothing"))
        assert "`squeue` was not found" in cli.status(str(work_dir))["scheduler"]["not_asked"]

    said = cli.cancel(str(work_dir), None)  # the jobs recorded their scheduler

    assert said.startswith(f"cancelled the jobs of map {job_name} on slurm")
    left = [job for job in dummy_slurm.jobs() if job["name"] == job_name]
    assert left and not [job for job in left if job["state"] in ("PENDING", "RUNNING")]
    assert WorkDir(str(work_dir)).read_log()[-1]["event"] == "cancelled"


GATED_DRIVER = textwrap.dedent("""
    import os, sys, time
    import poolparty_raster as pp

    def gated(task):
        x, gate = task
        while not os.path.exists(gate):  # the test opens it
            time.sleep(0.05)
        return x

    if __name__ == "__main__":
        pool = pp.SlurmArrayPool(work_dir=sys.argv[1], progress=False, keep_work_dir=True,
                                 num_simultaneously_running_tasks=2, polling_interval=0.5)
        pool.map(gated, [(x, sys.argv[2]) for x in range(4)], chunksize=1)
""")


def test_status_of_a_real_slurm_map_counts_what_squeue_says(real_slurm, tmp_path):
    script, work_dir, gate = tmp_path / "driver.py", str(tmp_path / "w"), tmp_path / "gate"
    script.write_text(GATED_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), work_dir, str(gate)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        # The array's throttle lets two of its four chunks run; they wait at the gate.
        while (shown := cli.status(work_dir) if WorkDir(work_dir).read_jobs() else None) is None \
                or shown["scheduler"]["running"] != 2:
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.2)
        assert shown["driver_running"] and shown["scheduler"]["name"] == "slurm"
        assert shown["scheduler"]["queued"] == 2 and shown["tasks"]["pending"] == 4
        assert "chunks queued: 2, running: 2 (slurm, asked now)" in statusview.status_text(shown)
        gate.touch()
        assert driver.wait(120) == 0
    finally:
        driver.kill()
        driver.wait(30)
    shown = cli.status(work_dir)
    assert shown["state"] == "ended" and shown["tasks"]["done"] == 4
    assert shown["scheduler"]["not_asked"] == "the map has ended"
    assert shown["throughput"]["tasks_per_minute"] > 0
