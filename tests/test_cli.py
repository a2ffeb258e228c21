"""The poolparty-raster command reads a kept work_dir."""
from __future__ import annotations

import os

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
