"""The driver's environment (its tokens and passwords among it) is stored once: in script.py,
mode 0600 in the private work_dir. The scheduler keeps no second copy (issue 21, item 4)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SECRET = "s3cr3t-token-value-7f1c"


def read_secret(_):
    return os.environ.get("MY_API_TOKEN")


def test_dummy_slurm_jobs_get_the_environment_from_script_py_not_from_sbatch(
        dummy_slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    pool = pp.SlurmArrayPool(work_dir=str(tmp_path / "w"), keep_work_dir=True, progress=False,
                             polling_interval=0.2, filesystem_lag=0.5)
    assert pool.map(read_secret, [0, 1]) == [SECRET, SECRET]  # the task still sees it
    state = json.loads(open(dummy_slurm.state_path).read())
    for job in state["jobs"].values():
        assert "MY_API_TOKEN" not in job.get("env", {})


def _state_save_location() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return next(line.split("=", 1)[1].strip() for line in out.splitlines()
                if line.startswith("StateSaveLocation"))


def test_real_slurm_stores_no_copy_of_the_drivers_environment(real_slurm, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("reading slurmctld's state directory needs root (CI runs as root)")
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    work_dir = tmp_path / "w"
    pool = pp.SlurmArrayPool(work_dir=str(work_dir), keep_work_dir=True, progress=False,
                             polling_interval=0.2)
    assert pool.map(read_secret, [0, 1]) == [SECRET, SECRET]
    job_ids = [job["job_id"] for job in WorkDir(str(work_dir)).read_jobs()]
    stored = [path for job_id in job_ids for path in glob.glob(
        os.path.join(_state_save_location(), "hash.*", f"job.{job_id}", "environment"))]
    assert stored, "slurmctld kept no environment file to check (finished jobs are purged " \
                   "after MinJobAge)"
    for path in stored:
        with open(path, "rb") as f:
            assert SECRET.encode() not in f.read()


def worker_sys_path(_):
    return list(sys.path)


def test_a_job_started_as_python_script_py_imports_nothing_from_the_work_dir(tmp_path):
    # Python puts a script's directory first on sys.path: every import of the job would look
    # in the work_dir first, and list it again whenever a chunk changed it (on a networked
    # filesystem, a round trip a name). script.py takes it off before it imports anything.
    work_dir = tmp_path / "w"
    with pp.LocalPool(1, start_method="spawn", work_dir=str(work_dir), progress=False) as pool:
        (seen,) = pool.map(worker_sys_path, [0])
    assert str(work_dir) not in seen
    assert os.path.realpath(work_dir) not in seen
    assert os.path.dirname(os.path.dirname(pp.__file__)) in seen  # the driver's own entries stay
