"""The poolparty-raster command reads a kept work_dir."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli
from poolparty_raster.workdir import WorkDir

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(x):
    return 2 * x


def test_status_report_and_clean(tmp_path, capsys):
    work_dir = str(tmp_path / "w")
    pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, progress=False).map(double, range(10), chunksize=3)
    assert cli.main(["status", work_dir]) == 0
    out = capsys.readouterr().out
    assert "10 tasks in 4 chunks" in out and "stored result: 4/4" in out
    cli.main(["report", work_dir])
    assert "submitted" in capsys.readouterr().out
    cli.main(["clean", work_dir])
    assert not os.path.exists(work_dir)


def test_refuses_a_directory_that_is_not_a_work_dir(tmp_path):
    with pytest.raises(SystemExit, match="not a poolparty_raster work_dir"):
        cli.main(["clean", str(tmp_path)])
    assert tmp_path.exists()


def loud_three(x):
    if x == 3:
        print("about to fail", file=sys.stderr)
        raise ValueError("three")
    return x


def test_inspect_shows_a_tasks_traceback_and_output(tmp_path, capsys):
    work_dir = str(tmp_path / "w")
    with pytest.raises(ValueError):
        pp.LocalPool(2, work_dir=work_dir, progress=False).map(loud_three, range(6), chunksize=2)
    cli.main(["inspect", work_dir])
    assert "chunk 1 (tasks 2-3): exception, stderr" in capsys.readouterr().out
    cli.main(["inspect", work_dir, "--task", "3"])
    out = capsys.readouterr().out
    assert "ValueError: three" in out and "loud_three" in out and "about to fail" in out


RUNNING = textwrap.dedent("""
    import sys, time
    import poolparty_raster as pp

    def slow(x):
        time.sleep(60)
        return x

    if __name__ == "__main__":
        pp.LocalPool(1, work_dir=sys.argv[1], progress=False).map(slow, range(2))
""")


def test_clean_never_removes_the_work_dir_of_a_running_map(tmp_path):
    script, work_dir = tmp_path / "running.py", tmp_path / "w"
    script.write_text(RUNNING)
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (work_dir / "jobs.jsonl").exists():  # submitted: the driver holds its lock
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.05)
        with pytest.raises(SystemExit, match="a driver is running the map"):
            list(cli.clean([str(work_dir)], force=True))
        assert (work_dir / "manifest.json").exists() and driver.poll() is None
    finally:
        driver.kill()
        driver.wait(30)


def test_clean_checks_every_work_dir_before_it_removes_any(tmp_path):
    finished, unfinished = str(tmp_path / "done"), str(tmp_path / "half")
    pp.LocalPool(2, work_dir=finished, keep_work_dir=True, progress=False).map(double, range(4))
    with pytest.raises(pp.TaskLostError):
        pp.LocalPool(2, work_dir=unfinished, max_num_resubmissions=0, progress=False,
                     polling_interval=0.2).map(dies_on_one, range(4), chunksize=1)
    with pytest.raises(SystemExit, match="unfinished map"):
        list(cli.clean([finished, unfinished], force=False))
    assert os.path.exists(finished) and os.path.exists(unfinished)
    assert list(cli.clean([finished, unfinished], force=True)) == [
        f"removed {finished}", f"removed {unfinished}"]


def dies_on_one(x):
    if x == 1:
        os._exit(3)
    return x


def test_inspect_names_the_worker_of_a_workers_mode_event(tmp_path, capsys):
    work_dir = str(tmp_path / "w")
    pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, progress=False).map(double, range(4))
    WorkDir(work_dir).log("error_state", worker=3, job_id="17", reason="Eqw")
    cli.main(["inspect", work_dir])
    assert "worker 3: error_state (Eqw)" in capsys.readouterr().out
