"""A kept work_dir's tasks, looked at and run again in this process: open_work_dir and
``poolparty-raster rerun``."""
from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli
from poolparty_raster.debugging import open_work_dir

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fails_on_three(x):
    if x == 3:
        raise ValueError(f"three: {x}")
    return 10 * x


def add(a, b):
    return a + b


@pytest.fixture
def failed_map(tmp_path):
    """The work_dir of a 6-task map (chunks of 2) whose task 3 raised."""
    work_dir = str(tmp_path / "w")
    with pytest.raises(ValueError):
        pp.LocalPool(2, work_dir=work_dir, progress=False).map(fails_on_three, range(6), chunksize=2)
    return work_dir


def test_task_gives_the_function_and_argument_of_a_task(failed_map):
    with open_work_dir(failed_map) as kept:
        function, argument = kept.task(3)
        assert argument == 3 and function(4) == 40
        assert kept.task(5).argument == 5 and kept.num_tasks == 6
        with pytest.raises(IndexError):
            kept.task(6)


def test_rerun_returns_the_value_or_raises_the_tasks_exception_here(failed_map):
    with open_work_dir(failed_map) as kept:
        assert kept.rerun(2) == 20
        with pytest.raises(ValueError, match="three: 3"):
            kept.rerun(3)


def test_a_starmap_task_runs_again_with_its_arguments(tmp_path):
    work_dir = str(tmp_path / "w")
    pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, progress=False).starmap(
        add, [(1, 2), (3, 4)])
    with open_work_dir(work_dir) as kept:
        assert kept.task(1).argument == (3, 4) and kept.rerun(1) == 7


def test_refuses_a_work_dir_others_may_write_before_unpickling(failed_map):
    os.chmod(failed_map, 0o770)
    with pytest.raises(pp.UnsafeWorkDirError, match="writable by group or others"):
        open_work_dir(failed_map)
    with pytest.raises(SystemExit, match="writable by group or others"):
        cli.main(["rerun", failed_map, "--task", "3"])


def test_refuses_a_symbolic_link_to_a_work_dir(failed_map, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(failed_map)
    with pytest.raises(pp.UnsafeWorkDirError, match="symbolic link"):
        open_work_dir(str(link))


def test_rerun_command_prints_the_value_or_the_traceback(failed_map, capsys):
    assert cli.main(["rerun", failed_map, "--task", "4"]) == 0
    assert capsys.readouterr().out.strip() == "40"
    assert cli.main(["rerun", failed_map, "--task", "3"]) == 1
    err = capsys.readouterr().err
    assert "ValueError: three: 3" in err and "fails_on_three" in err
    with pytest.raises(SystemExit, match="not in the map's 0..5"):
        cli.main(["rerun", failed_map, "--task", "9"])


def test_rerun_with_pdb_stops_in_the_frame_that_raised(failed_map):
    done = subprocess.run([sys.executable, "-m", "poolparty_raster.cli", "rerun", failed_map,
                           "--task", "3", "--pdb"], input="p x * 7\nq\n", text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "ValueError: three: 3" in done.stderr
    assert "(Pdb) 21" in done.stdout  # x is the task's argument: pdb is in the task's frame
