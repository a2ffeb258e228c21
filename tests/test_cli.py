"""The poolparty-raster command reads a kept work_dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli, statusview
from poolparty_raster.schedulers.base import TaskState, TaskStatus
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
    assert "10 tasks in 4 chunks" in out and "tasks: 10 done, 0 raised, 0 lost, 0 not run" in out
    assert "driver: not running; the map ended" in out
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


def test_a_running_map_is_shown_running_and_is_neither_cancelled_nor_removed(tmp_path):
    script, work_dir = tmp_path / "running.py", tmp_path / "w"
    script.write_text(RUNNING)
    driver = subprocess.Popen([sys.executable, str(script), str(work_dir)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (work_dir / "jobs.jsonl").exists():  # submitted: the driver holds its lock
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.05)
        shown = cli.status(str(work_dir))
        assert shown["driver_running"] and shown["state"] == "running"
        assert shown["tasks"] == {"done": 0, "raised": 0, "lost": 0, "pending": 2}
        assert [job["job_id"] for job in shown["jobs"]]
        assert "2 pending (queued or running)" in statusview.status_text(shown)
        with pytest.raises(SystemExit, match="a driver is running the map"):
            cli.cancel(str(work_dir), "slurm")
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
    with pytest.raises(SystemExit, match="were lost"):
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
    assert "worker 3: error state (Eqw)" in capsys.readouterr().out


def raises_on_five_dies_on_seven(x):
    if x == 5:
        raise ValueError("five")
    if x == 7:
        os._exit(3)
    return x


@pytest.fixture
def raised_and_lost(tmp_path):
    """The work_dir of a map of 8 one-task chunks whose task 5 raised and task 7 died."""
    work_dir = str(tmp_path / "w")
    with pytest.raises(ValueError, match="five"):
        pp.LocalPool(2, work_dir=work_dir, max_num_resubmissions=0, progress=False,
                     polling_interval=0.2).map(raises_on_five_dies_on_seven, range(8), chunksize=1)
    return work_dir


def test_status_counts_raised_and_lost_tasks(raised_and_lost, capsys):
    assert cli.main(["status", raised_and_lost]) == 0
    out = capsys.readouterr().out
    assert "tasks: 6 done, 1 raised, 1 lost, 0 not run" in out
    assert "raised: task 5: ValueError: five" in out and "lost: tasks 7" in out
    cli.main(["status", raised_and_lost, "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["tasks"] == {"done": 6, "raised": 1, "lost": 1, "pending": 0}
    assert shown["raised"] == [{"task": 5, "error": "ValueError: five"}]
    assert shown["lost_tasks"] == [7] and shown["state"] == "ended"
    assert not shown["driver_running"] and shown["jobs"]


def test_a_map_whose_only_failure_is_a_raised_task_does_not_read_as_all_done(tmp_path):
    work_dir = str(tmp_path / "w")
    with pytest.raises(ValueError):
        pp.LocalPool(2, work_dir=work_dir, progress=False).map(loud_three, range(8), chunksize=2)
    shown = cli.status(work_dir)
    assert shown["tasks"] == {"done": 7, "raised": 1, "lost": 0, "pending": 0}


def test_inspect_tells_a_lost_task_from_one_not_run_yet(raised_and_lost, capsys):
    cli.main(["inspect", raised_and_lost, "--task", "7"])
    out = capsys.readouterr().out
    assert "task 7 is in chunk 7 (tasks 7-7): lost" in out and "chunk 7, attempt 1: died" in out
    cli.main(["inspect", raised_and_lost, "--json"])
    found = json.loads(capsys.readouterr().out)
    assert [c["chunk"] for c in found["chunks"]] == [5]
    assert [(d["subject"], d["attempt"]) for d in found["deaths"]] == [("chunk 7", 1)]
    cli.main(["inspect", raised_and_lost, "--task", "5", "--json"])
    details = json.loads(capsys.readouterr().out)
    assert details["state"] == "raised" and "ValueError: five" in details["exception"]


def test_report_as_json_holds_every_event(raised_and_lost, capsys):
    cli.main(["report", raised_and_lost, "--json"])
    events = json.loads(capsys.readouterr().out)["events"]
    assert events == WorkDir(raised_and_lost).read_log()
    assert {"prepared", "lost", "map_finished"} <= {e["event"] for e in events}


def test_clean_keeps_a_work_dir_whose_task_raised_unless_forced(tmp_path):
    work_dir = str(tmp_path / "w")
    with pytest.raises(ValueError):
        pp.LocalPool(2, work_dir=work_dir, progress=False).map(loud_three, range(4))
    with pytest.raises(SystemExit, match="raised"):
        list(cli.clean([work_dir], force=False))
    assert os.path.exists(os.path.join(work_dir, "tasks.zip"))
    assert list(cli.clean([work_dir], force=True)) == [f"removed {work_dir}"]


def test_cancel_refuses_a_local_map_and_says_why(raised_and_lost):
    """The jobs record their scheduler; LocalPool's processes end with their driver."""
    with pytest.raises(SystemExit, match="ran on local, whose jobs the command line cannot cancel"):
        cli.cancel(raised_and_lost, None)


def test_version_and_help_without_markup(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"poolparty-raster {pp.__version__}"
    for argv in (["--help"], ["status", "--help"], ["rerun", "--help"], ["clean", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        assert out.startswith("usage: poolparty-raster") and "``" not in out


def test_scheduler_counts_each_chunk_without_a_result_once():
    state = {name: TaskStatus(getattr(TaskState, name.upper()))
             for name in ("pending", "running", "error", "finished")}
    answer = {("7", 0): state["running"], ("7", 1): state["pending"],
              ("7", 2): state["error"], ("8", 2): state["pending"],  # resubmitted from Eqw
              ("7", 3): state["finished"], ("7", 4): state["running"], ("7", 5): state["error"]}
    status = {"mode": "array", "state": "running", "jobs": [{"job_id": "7"}, {"job_id": "8"}]}
    counts = statusview.scheduler_counts(status, {4}, lambda jobs: ("sge", answer))
    assert counts == {"name": "sge", "members": "chunks", "queued": 2, "running": 1,
                      "error_state": 1, "not_asked": None}
    # In workers mode the members are workers, whatever chunks have results.
    counts = statusview.scheduler_counts({**status, "mode": "workers"}, {4},
                                         lambda jobs: ("sge", answer))
    assert (counts["members"], counts["queued"], counts["running"]) == ("workers", 2, 2)
