"""The command line reaches the jobs of a driver that was killed, on every scheduler it can
rebuild from the work_dir: `status` counts them from the scheduler's own listing and `cancel`
ends them."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from poolparty_raster import cli
from poolparty_raster.workdir import WorkDir

DRIVER = textwrap.dedent("""
    import sys, time
    import poolparty_raster as pp

    def slow(x):
        time.sleep(300)
        return x

    if __name__ == "__main__":
        pool = getattr(pp, sys.argv[2])(work_dir=sys.argv[1], progress=False)
        pool.map(slow, range(3), chunksize=1)
""")
# (fixture, pool class, the scheduler's name in the work_dir's job records)
SCHEDULERS = [("dummy_sge", "SgePool", "sge"), ("dummy_pbs", "PbsPool", "pbs"),
              ("dummy_lsf", "LsfPool", "lsf"), ("dummy_htcondor", "HTCondorPool", "htcondor")]


def killed_driver_work_dir(tmp_path, pool_class: str) -> str:
    """The work_dir of a map of 3 long chunks whose driver was SIGKILLed once its jobs were
    recorded: they stay queued or running, with nobody to cancel them."""
    script, work_dir = tmp_path / "driver.py", tmp_path / "w"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir), pool_class],
                              cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (work_dir.is_dir() and WorkDir(str(work_dir)).read_jobs()):
            assert time.monotonic() < deadline and driver.poll() is None, "no job recorded"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    return str(work_dir)


@pytest.mark.parametrize("fixture, pool_class, name", SCHEDULERS)
def test_status_counts_and_cancel_ends_a_killed_drivers_jobs(request, tmp_path, fixture,
                                                            pool_class, name):
    queue = request.getfixturevalue(fixture)
    work_dir = killed_driver_work_dir(tmp_path, pool_class)
    job_name = WorkDir(work_dir).read_manifest().job_name

    counted = cli.status(work_dir)["scheduler"]
    assert counted["name"] == name and counted["not_asked"] is None
    assert counted["queued"] + counted["running"] == 3

    assert cli.cancel(work_dir, None).startswith(f"cancelled the jobs of map {job_name} on {name}")
    assert queue.wait_idle(30)  # nothing of the map is queued or running any more
    assert WorkDir(work_dir).read_log()[-1]["event"] == "cancelled"
