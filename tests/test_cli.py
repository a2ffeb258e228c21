"""The poolparty-raster command reads a kept work_dir."""
from __future__ import annotations

import os
import sys

import pytest

import poolparty_raster as pp
from poolparty_raster import cli


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
