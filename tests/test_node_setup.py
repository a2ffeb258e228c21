"""Set-up lines (``setup=[...]``) run on the node, in the job's own shell, before the node
program: what they export reaches the tasks (over the driver's values), and a failing line
fails its chunk at once, with its output in the error."""
from __future__ import annotations

import os

import pytest

import poolparty_raster as pp
from poolparty_raster.errors import TaskLostError
from poolparty_raster.schedulers.jobcommand import SETUP_FAILED, checked_setup

FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}
SETUP = ["export POOLPARTY_TEST_GREETING=from-setup", "export POOLPARTY_TEST_OVERRIDDEN=node"]
FAILING = ["echo loading gdal; echo 'gdal/9.9: no such module' >&2", "false",
           "export POOLPARTY_TEST_GREETING=never"]


def greeting(_: int) -> tuple[str | None, str | None]:
    return os.environ.get("POOLPARTY_TEST_GREETING"), os.environ.get("POOLPARTY_TEST_OVERRIDDEN")


def array_pools():
    """(fixture, pool) for each backend the set-up lines are tested on, in array mode."""
    return {
        "dummy_slurm": lambda **o: pp.SlurmArrayPool(**o),
        "dummy_slurm_one_job": lambda **o: pp.SlurmPool(**o),
        "dummy_sge": lambda **o: pp.SgePool(**o),
        "dummy_pbs": lambda **o: pp.PbsPool(**o),
        "dummy_lsf": lambda **o: pp.LsfPool(**o),
        "dummy_htcondor": lambda **o: pp.HTCondorPool(**o),
    }


@pytest.mark.parametrize("name", sorted(array_pools()))
def test_setup_exports_reach_the_tasks_over_the_drivers_values(name, request, monkeypatch):
    request.getfixturevalue(name.removesuffix("_one_job"))
    monkeypatch.setenv("POOLPARTY_TEST_OVERRIDDEN", "driver")  # travels in script.py
    pool = array_pools()[name](setup=SETUP, **FAST)
    assert pool.map(greeting, range(3), chunksize=1) == [("from-setup", "node")] * 3


@pytest.mark.parametrize("name", sorted(array_pools()))
def test_failing_setup_line_fails_its_chunk_at_once_with_its_output(name, request):
    queue = request.getfixturevalue(name.removesuffix("_one_job"))
    pool = array_pools()[name](setup=FAILING, **FAST)
    with pytest.raises(TaskLostError) as lost:
        pool.map(greeting, range(2), chunksize=1)
    message = str(lost.value)
    assert lost.value.task_indices == [0, 1]
    assert "a setup line failed on the node" in message
    assert "gdal/9.9: no such module" in message and "loading gdal" in message
    assert f"{SETUP_FAILED} line 2 of 3 (false), exited 1" in message
    assert len(queue.submissions) == 1 if name != "dummy_slurm_one_job" else 2  # no resubmission


def test_setup_in_workers_mode(dummy_slurm):
    pool = pp.SlurmArrayPool(setup=SETUP, mode="workers", max_workers=2, **FAST)
    assert pool.map(greeting, range(4), chunksize=1) == [("from-setup", "node")] * 4


def test_setup_syntax_is_checked_when_the_pool_is_made():
    with pytest.raises(ValueError, match="not valid bash"):
        pp.SlurmArrayPool(setup=["if then"])
    assert checked_setup("module load gdal") == ("module load gdal",)  # one line as a string


def test_real_slurm_runs_setup_lines(real_slurm):
    pool = pp.SlurmArrayPool(setup=SETUP, **FAST)
    assert pool.map(greeting, range(2), chunksize=1) == [("from-setup", "node")] * 2
    with pytest.raises(TaskLostError, match="gdal/9.9: no such module"):
        pp.SlurmArrayPool(setup=FAILING, **FAST).map(greeting, range(1))


def test_real_sge_runs_setup_lines(real_sge):
    pool = pp.SgePool(setup=SETUP, **FAST)
    assert pool.map(greeting, range(2), chunksize=1) == [("from-setup", "node")] * 2
    with pytest.raises(TaskLostError, match="gdal/9.9: no such module"):
        pp.SgePool(setup=FAILING, **FAST).map(greeting, range(1))


def test_setup_in_an_aws_batch_container(dummy_batch, monkeypatch):
    from dummy_queues import aws

    monkeypatch.setenv("POOLPARTY_TEST_OVERRIDDEN", "driver")
    pool = pp.AwsBatchPool(setup=SETUP, **aws.pool_options("batch"), **FAST)
    assert pool.map(greeting, range(3)) == [("from-setup", "node")] * 3


def test_failing_setup_in_workers_mode_gives_up_quoting_the_line(dummy_slurm):
    pool = pp.SlurmArrayPool(setup=FAILING, mode="workers", max_workers=2, **FAST)
    with pytest.raises(TaskLostError) as lost:
        pool.map(greeting, range(3), chunksize=1)
    assert lost.value.task_indices == [0, 1, 2]
    assert "worker jobs in a row ended without running a chunk" in str(lost.value)
    assert f"{SETUP_FAILED} line 2 of 3 (false), exited 1" in str(lost.value)
    assert len(dummy_slurm.submissions) < 10  # a few workers, not an endless resubmission
