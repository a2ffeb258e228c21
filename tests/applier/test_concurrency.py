"""Every way of running gives bit-identical outputs; failures leave no output behind."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import traceback
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import pytest
from rasterhelpers import readRaster, writeRaster

from poolparty_raster import applier
from poolparty_raster.applier import grid


def _style(kind, extra=None, **kwargs):
    """configure(controls) for a kind; ``extra()`` gives more computeWorkerExtraParams once
    the scheduler's fixture is active (the AWS dummies hand out their client then)."""
    base = kwargs.pop("computeWorkerExtraParams", {})

    def configure(controls):
        params = dict(base, **(extra() if extra else {}))
        controls.setConcurrencyStyle(applier.ConcurrencyStyle(
            computeWorkerKind=kind, computeWorkerExtraParams=params, **kwargs))
    return configure


def _mpPool(controls):
    pool = multiprocessing.get_context("spawn").Pool(2)
    controls.setPool(pool)
    return pool


def _aws(kind):
    return lambda: __import__("dummy_queues.aws").aws.pool_options(kind)


# name -> configure(controls); a configure that returns a pool gets it closed afterwards.
RUNNERS = {
    "none": lambda controls: None,
    "threads": _style(applier.CW_THREADS, numComputeWorkers=2),
    "threads-single-block": _style(applier.CW_THREADS, numComputeWorkers=3,
                                   singleBlockComputeWorkers=True),
    "mp-pool": _mpPool,
}
RUNNERS["subproc-array"] = _style(applier.CW_SUBPROC, numComputeWorkers=2,
                                  computeWorkerExtraParams={"progress": False, "mode": "array"})
RUNNERS["subproc-workers"] = _style(applier.CW_SUBPROC, numComputeWorkers=2,
                                    computeWorkerExtraParams={"progress": False})
_CLUSTER = {"progress": False, "polling_interval": 0.2, "filesystem_lag": 0.5}
# name -> (fixture providing the scheduler, configure)
CLUSTER_RUNNERS = {
    "dummy-slurm": ("dummy_slurm", _style(applier.CW_SLURM, numComputeWorkers=2,
                                          computeWorkerExtraParams=_CLUSTER)),
    "dummy-sge": ("dummy_sge", _style(applier.CW_SGE, numComputeWorkers=2,
                                      computeWorkerExtraParams=_CLUSTER)),
    "dummy-pbs": ("dummy_pbs", _style(applier.CW_PBS, numComputeWorkers=2,
                                      computeWorkerExtraParams=_CLUSTER)),
    "dummy-ecs": ("dummy_ecs", _style(applier.CW_ECS, _aws("ecs"), numComputeWorkers=2,
                                      computeWorkerExtraParams=_CLUSTER)),
    "dummy-batch": ("dummy_batch", _style(applier.CW_AWSBATCH, _aws("batch"),
                                          numComputeWorkers=2, computeWorkerExtraParams=_CLUSTER)),
    "real-slurm": ("real_slurm", _style(applier.CW_SLURM, numComputeWorkers=2,
                                        computeWorkerExtraParams=_CLUSTER)),
    "real-sge": ("real_sge", _style(applier.CW_SGE, numComputeWorkers=2,
                                    computeWorkerExtraParams=_CLUSTER)),
}
# The failure path is the same code on every pool (the pool re-raises; apply aborts the
# outputs): one of each kind of runner keeps the suite fast.
FAILURE_RUNNERS = ["none", "threads", "mp-pool", "subproc-workers", "dummy-slurm"]
# Those whose tasks run in other processes: the traceback comes back as text.
REMOTE_RUNNERS = ["mp-pool", "subproc-workers", "dummy-slurm"]


def _configure(request):
    if request.param in CLUSTER_RUNNERS:
        fixture, runner = CLUSTER_RUNNERS[request.param]
        request.getfixturevalue(fixture)
    else:
        runner = RUNNERS[request.param]
    pools = []

    def apply(controls):
        pool = runner(controls)
        if pool is not None:
            pools.append(pool)
    yield apply
    for pool in pools:
        pool.terminate()
        pool.join()


@pytest.fixture(params=sorted(RUNNERS) + sorted(CLUSTER_RUNNERS))
def configure(request):
    yield from _configure(request)


@pytest.fixture(params=FAILURE_RUNNERS)
def configureForFailure(request):
    yield from _configure(request)


def mixed(info, inputs, outputs, otherArgs):
    a, b = inputs.a.astype(np.float64), inputs.b.astype(np.float64)
    o = info.getOverlapSize()
    outputs.mean = ((a + b) / 2).astype(np.float32)
    outputs.flags = np.stack([(a > b), (a < otherArgs.threshold)]).astype(np.uint8)[:, 0]
    # A value that depends on the neighbours, so overlap handling shows up in the result.
    smooth = a.copy()
    smooth[:, o:-o, o:-o] = (a[:, :-2 * o, o:-o] + a[:, 2 * o:, o:-o]) / 2
    outputs.smooth = smooth
    otherArgs.blocks += 1


def runMixed(tmp_path, configure, out):
    rng = np.random.default_rng(11)
    infiles = applier.FilenameAssociations()
    infiles.a = writeRaster(tmp_path / "a.tif", rng.integers(0, 1000, (2, 77, 93), dtype=np.uint16))
    infiles.b = writeRaster(tmp_path / "b.tif", rng.normal(500, 100, (2, 77, 93)).astype(np.float32))
    outfiles = applier.FilenameAssociations()
    for name in ("mean", "flags", "smooth"):
        setattr(outfiles, name, str(out / f"{name}.tif"))
    controls = applier.ApplierControls()
    controls.setWindowXsize(16)
    controls.setWindowYsize(16)
    controls.setOverlap(1)
    configure(controls)
    otherArgs = applier.OtherInputs()
    otherArgs.threshold = 400
    otherArgs.blocks = 0
    result = applier.apply(mixed, infiles, outfiles, otherArgs, controls)
    assert sum(o.blocks for o in result.otherArgsList) == 6 * 5
    return {name: readRaster(path) for name, _, path in outfiles}, result


def assertIdentical(results, reference):
    for name, array in reference.items():
        assert results[name].dtype == array.dtype
        assert results[name].tobytes() == array.tobytes(), name


def test_runners_give_identical_outputs(tmp_path, configure):
    reference, _ = runMixed(tmp_path, RUNNERS["none"], _mkdir(tmp_path / "serial"))
    results, _ = runMixed(tmp_path, configure, _mkdir(tmp_path / "other"))
    assertIdentical(results, reference)


@pytest.mark.parametrize("singleBlock", [False, True], ids=["sized", "single-block"])
def test_a_users_thread_pool_runs_as_threads(tmp_path, singleBlock):
    # Threads share the process: a block file or an open dataset shared between them
    # would be written or read by two at once. Several tasks must run, and agree.
    reference, _ = runMixed(tmp_path, RUNNERS["none"], _mkdir(tmp_path / "serial"))
    with ThreadPool(2) as pool:
        def configure(controls):
            controls.setPool(pool)
            controls.setConcurrencyStyle(applier.ConcurrencyStyle(
                singleBlockComputeWorkers=singleBlock))
        results, result = runMixed(tmp_path, configure, _mkdir(tmp_path / "threads"))
    assertIdentical(results, reference)
    # Sized as threads (nothing to amortise): several tasks per thread, not one task.
    sizes = [1] * 30 if singleBlock else grid.task_sizes(30, 2, False, "threads", 16 * 16)
    assert len(result.otherArgsList) == len(sizes) > 2 * 2


def failOnOneBlock(info, inputs, outputs):
    if (info.blockDefn.top, info.blockDefn.left) == (32, 48):
        raise ZeroDivisionError("synthetic failure")
    outputs.out = inputs.img


def test_failure_reports_block_and_leaves_no_output(tmp_path, configureForFailure, request):
    configure = configureForFailure
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", np.ones((1, 70, 90), np.uint8))
    out = _mkdir(tmp_path / "out")
    outfiles = applier.FilenameAssociations()
    outfiles.new = str(out / "new.tif")
    outfiles.old = str(out / "old.tif")
    with open(outfiles.old, "wb") as f:
        f.write(b"an earlier result")
    before = hashlib.sha256(Path(outfiles.old).read_bytes()).hexdigest()
    controls = applier.ApplierControls()
    controls.setWindowXsize(16)
    controls.setWindowYsize(16)
    configure(controls)

    def both(info, inputs, outputs):
        failOnOneBlock(info, inputs, outputs)
        outputs.new = outputs.old = inputs.img

    with pytest.raises(ZeroDivisionError) as caught:
        applier.apply(both, infiles, outfiles, controls=controls)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "top=32, left=48" in notes
    # Where the function ran: the remote traceback as the cause, or (in this process)
    # the exception's own traceback.
    cause = caught.value.__cause__
    if request.node.callspec.params["configureForFailure"] in REMOTE_RUNNERS:
        assert cause is not None
    where = str(cause) if cause else "".join(traceback.format_tb(caught.value.__traceback__))
    assert "failOnOneBlock" in where and 'raise ZeroDivisionError("synthetic failure")' in where
    assert os.listdir(out) == ["old.tif"]
    assert hashlib.sha256(Path(outfiles.old).read_bytes()).hexdigest() == before


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    return path
