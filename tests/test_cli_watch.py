"""`poolparty-raster status` of a map whose driver still runs: its throughput and time left,
and `--watch` (refreshing until the map ends, on either side of the work_dir)."""
from __future__ import annotations

import io
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
from poolparty_raster.workdir import WorkDir

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(x):
    return 2 * x


GATED = textwrap.dedent("""
    import os, sys, time
    import poolparty_raster as pp

    def gated(task):
        x, first_gate, second_gate = task
        gate = first_gate if x < 2 else second_gate
        while not os.path.exists(gate):  # the test opens it
            time.sleep(0.02)
        return x

    if __name__ == "__main__":
        work_dir, first_gate, second_gate, keep = sys.argv[1:]
        pool = pp.LocalPool(2, mode="workers", work_dir=work_dir, progress=False,
                            keep_work_dir=keep == "keep")
        pool.map(gated, [(x, first_gate, second_gate) for x in range(4)], chunksize=1)
""")


def wait_for(condition, what, driver, seconds=60):
    """Wait until ``condition()`` holds, while the driver runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert driver.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


@pytest.fixture
def gated_map(tmp_path):
    """start(keep): a driver running a 4-task workers-mode LocalPool map whose tasks 0-1 wait
    for the first gate file and tasks 2-3 for the second; returns (driver, work_dir, gates)."""
    script = tmp_path / "gated.py"
    script.write_text(GATED)
    drivers = []

    def start(keep=True):
        work_dir, gates = tmp_path / "w", (tmp_path / "gate1", tmp_path / "gate2")
        runs = len(drivers) + 1  # a second driver resumes the map
        driver = subprocess.Popen([sys.executable, str(script), str(work_dir), *map(str, gates),
                                   "keep" if keep else "remove"], cwd=tmp_path)
        drivers.append(driver)
        wait_for(lambda: [e["event"] for e in WorkDir(str(work_dir)).read_log()].count(
            "submitted") == runs, "a job submitted", driver)
        return driver, str(work_dir), gates

    yield start
    for driver in drivers:
        driver.kill()
        driver.wait(30)


def test_status_of_a_running_map_has_throughput_and_time_left_once_tasks_are_done(gated_map):
    driver, work_dir, (first_gate, second_gate) = gated_map()
    shown = cli.status(work_dir)
    assert shown["state"] == "running" and shown["tasks"]["pending"] == 4
    assert shown["throughput"]["tasks_done"] == 0 and shown["throughput"]["eta_seconds"] is None
    assert "throughput: no estimate yet" in statusview.status_text(shown)
    # Two workers, each blocked in a chunk it claimed (a claim may take a run of chunks).
    wait_for(lambda: cli.status(work_dir)["claimed"] >= 2, "two chunks claimed", driver)
    assert cli.status(work_dir)["claimed"] <= 4

    first_gate.touch()
    wait_for(lambda: len(WorkDir(work_dir).finished_chunks()) == 2, "two chunks done", driver)
    started = shown["throughput"]["since"]
    shown = cli.status(work_dir, now=started + 60)  # two tasks in a minute
    assert shown["tasks"] == {"done": 2, "raised": 0, "lost": 0, "pending": 2}
    assert shown["throughput"]["tasks_per_minute"] == pytest.approx(2.0)
    assert shown["throughput"]["eta_seconds"] == pytest.approx(60.0)
    text = statusview.status_text(shown)
    assert "throughput: 2 tasks/min since this run started" in text
    assert "at that rate the 2 pending take 1 min 00 s more" in text


def test_throughput_of_a_resumed_map_counts_this_runs_tasks_alone(gated_map):
    driver, work_dir, (first_gate, second_gate) = gated_map()
    first_gate.touch()
    wait_for(lambda: len(WorkDir(work_dir).finished_chunks()) == 2, "two chunks done", driver)
    driver.kill()
    driver.wait(30)

    driver, _, _ = gated_map()  # resumes: tasks 0-1 are stored, 2-3 wait at the second gate
    shown = cli.status(work_dir)
    assert shown["tasks"]["done"] == 2 and shown["throughput"]["tasks_done"] == 0
    assert shown["throughput"]["tasks_per_minute"] is None
    second_gate.touch()
    assert driver.wait(60) == 0
    shown = cli.status(work_dir)
    assert shown["state"] == "ended" and shown["throughput"]["tasks_done"] == 2


def test_status_says_why_a_local_maps_processes_are_not_counted(gated_map, capsys):
    """LocalPool's processes belong to its driver: the command line cannot ask about them."""
    driver, work_dir, _ = gated_map()
    assert cli.main(["status", work_dir, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["scheduler"] == {"name": "local", "members": "workers", "queued": None,
                                  "running": None, "error_state": None,
                                  "not_asked": shown["scheduler"]["not_asked"]}
    assert "LocalPool's processes belong to its driver" in shown["scheduler"]["not_asked"]
    assert {"throughput", "claimed", "scheduler", "tasks", "jobs", "state"} <= set(shown)
    cli.main(["status", work_dir])
    assert "workers queued and running: unknown (local: LocalPool's" in capsys.readouterr().out


def opening_the_gates(driver, gates, naps=None):
    """A sleep for cli.watch that opens the gates and waits for the driver to end (noting the
    seconds it was asked to sleep in ``naps``)."""
    def sleep(seconds):
        if naps is not None:
            naps.append(seconds)
        for gate in gates:
            gate.touch()
        assert driver.wait(60) == 0
    return sleep


def test_watch_refreshes_until_the_map_ends_then_shows_how_it_ended(gated_map):
    driver, work_dir, gates = gated_map()
    naps = []
    out = io.StringIO()
    assert cli.watch(work_dir, 7.0, as_json=False, out=out,
                     sleep=opening_the_gates(driver, gates, naps)) == 0
    assert naps == [7.0]  # one status while it ran, one after it ended
    running, ended = out.getvalue().split("--- ")[1:]
    assert "driver: running" in running and "4 pending (queued or running)" in running
    assert "driver: not running; the map ended" in ended and "4 done" in ended
    assert "tasks/min over this run" in ended


def test_watch_of_a_map_that_removes_its_work_dir_says_so(gated_map):
    driver, work_dir, gates = gated_map(keep=False)
    out = io.StringIO()
    assert cli.watch(work_dir, 5.0, as_json=True, out=out,
                     sleep=opening_the_gates(driver, gates)) == 0
    first, gone = out.getvalue().splitlines()
    assert json.loads(first)["state"] == "running"
    assert gone.startswith(f"{work_dir} is gone: its driver removed it")


def test_watch_stops_quietly_on_ctrl_c_and_once_a_map_is_not_running(gated_map, capsys):
    driver, work_dir, _ = gated_map()

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    out = io.StringIO()
    assert cli.watch(work_dir, 5.0, as_json=True, out=out, sleep=ctrl_c) == 0
    assert json.loads(out.getvalue())["driver_running"]
    driver.kill()
    driver.wait(30)
    assert cli.main(["status", work_dir, "--watch", "--json"]) == 0  # shown once: not running
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["state"] == "stopped"


def test_watch_goes_before_or_after_the_work_dir(tmp_path, capsys):
    work_dir = str(tmp_path / "w")
    pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, progress=False).map(double, range(4))
    for argv in (["--watch", work_dir, "--json"], [work_dir, "--watch", "--json"]):
        assert cli.main(["status", *argv]) == 0  # an ended map: shown once
        (line,) = capsys.readouterr().out.splitlines()
        assert json.loads(line)["state"] == "ended"


@pytest.mark.parametrize("argv, seconds", [
    (["--watch", "W"], 5.0), (["W", "--watch"], 5.0), (["--watch", "2.5", "W"], 2.5),
    (["W", "--watch", "30"], 30.0), (["--watch=7", "W", "--json"], 7.0)])
def test_watch_seconds_are_read_on_either_side_of_the_work_dir(argv, seconds, monkeypatch):
    watched = []
    monkeypatch.setattr(cli, "watch", lambda path, every, as_json: watched.append((path, every)))
    cli.main(["status", *argv])
    assert watched == [(os.path.abspath("W"), seconds)]


@pytest.mark.parametrize("argv, says", [
    (["--watch", "0", "W"], "'0' is not a positive number of seconds"),
    (["W", "--watch", "soon"], "'soon' is not a positive number of seconds"),
    (["--watch", "inf", "W"], "'inf' is not a positive number of seconds"),
    (["--watch", "30"], "required: work_dir (one named like a number goes before --watch")])
def test_watch_refuses_what_is_no_number_of_seconds(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["status", *argv])
    assert exited.value.code == 2 and says in capsys.readouterr().err
