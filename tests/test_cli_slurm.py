"""The command line on a SLURM map (the dummy SLURM): status, rerun, and cancelling the jobs
of a driver that was killed."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli
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


def test_cancel_ends_the_jobs_of_a_killed_driver(dummy_slurm, tmp_path):
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
    assert cli.status(str(work_dir))["state"] == "stopped"

    said = cli.cancel(str(work_dir), None)  # the jobs recorded their scheduler

    assert said.startswith(f"cancelled the jobs of map {job_name} on slurm")
    left = [job for job in dummy_slurm.jobs() if job["name"] == job_name]
    assert left and not [job for job in left if job["state"] in ("PENDING", "RUNNING")]
    assert WorkDir(str(work_dir)).read_log()[-1]["event"] == "cancelled"
