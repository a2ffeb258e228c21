"""This package's worker processes keep freed heap memory from block to block (glibc), so a
numpy block function's temporaries do not take fresh pages every block; the caller's
processes, and a user's own allocator settings, are left alone."""
from __future__ import annotations

import multiprocessing
import resource

import numpy as np
import pytest
from rasterhelpers import writeRaster

from poolparty_raster import applier
from poolparty_raster.applier import heap

pytestmark = pytest.mark.skipif(not heap._is_glibc(),
                                reason="the heap setting is glibc's; elsewhere nothing is set")

# Three temporaries of 3 MiB alive at once, then freed: 9 MiB free at the heap's top, over
# the trim threshold glibc adapts to after the first such array (twice its size), so by
# default every round hands the pages back and faults them in again.
ROUNDS, TEMPORARIES, TEMPORARY_BYTES = 10, 3, 3 * 1024 * 1024
PAGES_PER_ROUND = TEMPORARIES * TEMPORARY_BYTES // resource.getpagesize()


@pytest.fixture(autouse=True)
def glibcDefaults(monkeypatch):
    """The allocator settings of the machine running the tests would change what glibc does
    by default; a test sets those it is about."""
    for name in heap._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def _temporaries() -> None:
    arrays = [np.ones(TEMPORARY_BYTES // 8) for _ in range(TEMPORARIES)]
    del arrays


def _recordFaults(info, inputs, outputs, otherArgs):
    _temporaries()  # the first round settles glibc's adaptive thresholds
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(ROUNDS):
        _temporaries()
    otherArgs.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    otherArgs.kept.append(bool(heap._kept))
    outputs.out = inputs.img


def _faultsSeen(tmp_path, configure):
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", np.ones((1, 64, 64), np.uint8))
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    configure(controls)
    otherArgs = applier.OtherInputs()
    otherArgs.faults, otherArgs.kept = [], []
    result = applier.apply(_recordFaults, infiles, outfiles, otherArgs, controls=controls)
    return ([f for o in result.otherArgsList for f in o.faults],
            {k for o in result.otherArgsList for k in o.kept})


def _localWorkers(controls):
    controls.setConcurrencyStyle(applier.ConcurrencyStyle(
        numComputeWorkers=1, computeWorkerKind=applier.CW_SUBPROC,
        computeWorkerExtraParams={"progress": False}))


def test_a_worker_reuses_the_pages_a_block_freed(tmp_path):
    faults, kept = _faultsSeen(tmp_path, _localWorkers)
    assert kept == {True}
    # Without the setting each round faults its 9 MiB in again (ROUNDS x PAGES_PER_ROUND).
    assert faults and max(faults) < PAGES_PER_ROUND


def test_the_callers_own_pool_processes_are_left_alone(tmp_path):
    # A multiprocessing pool of the user's runs other work after the apply.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        faults, kept = _faultsSeen(tmp_path, lambda controls: controls.setPool(pool))
    assert kept == {False}
    assert min(faults) >= ROUNDS * PAGES_PER_ROUND // 2  # glibc's default: they fault


def test_a_users_allocator_setting_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    faults, kept = _faultsSeen(tmp_path, _localWorkers)
    assert kept == {False}
    assert min(faults) >= ROUNDS * PAGES_PER_ROUND // 2
