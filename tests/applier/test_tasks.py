"""How blocks become tasks: sized by the pool's parallelism, capped whatever the raster size,
numComputeWorkers as workers mode, blocks streamed through files that are cleaned up."""
from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
from rasterhelpers import readRaster, writeRaster

from poolparty_raster import applier
from poolparty_raster.applier import grid, poolfactory
from poolparty_raster.applier.task import TaskPart


class RecordingPool:
    """A pool of this package's shape: ``parallelism`` and ``imap_unordered``, run here."""

    def __init__(self, parallelism):
        self.parallelism = parallelism
        self.tasks = []

    def imap_unordered(self, func, iterable, chunksize=1):
        for task in iterable:
            self.tasks.append(task)
            yield func(task)


def copy(info, inputs, outputs):
    outputs.out = inputs.img


def runOn(tmp_path, pool, shape=(1, 160, 160), window=16, **styleArgs):
    array = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array)
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(window, window)
    controls.setPool(pool)
    controls.setConcurrencyStyle(applier.ConcurrencyStyle(**styleArgs))
    applier.apply(copy, infiles, outfiles, controls=controls)
    np.testing.assert_array_equal(readRaster(outfiles.out), array)


def test_set_pool_sizes_tasks_by_its_parallelism(tmp_path):
    # 100 blocks of 16 x 16: array mode wants 4 tasks per slot, but at least 4 Mpix each.
    pool = RecordingPool(parallelism=3)
    runOn(tmp_path, pool)
    assert len(pool.tasks) == 1
    assert grid.task_sizes(10_000, 3, False, "array", 256 * 256)[0] == 834  # 12 tasks' worth
    assert grid.task_sizes(10_000, 50, False, "array", 256 * 256)[0] == 64  # the minimum
    pool = RecordingPool(parallelism=3)
    runOn(tmp_path, pool, singleBlockComputeWorkers=True)
    assert len(pool.tasks) == 100 and all(
        len(TaskPart.unpacked(t).blocks) == 1 for t in pool.tasks)
    # numComputeWorkers with setPool: the user's word for how many run at once.
    style = applier.ConcurrencyStyle(numComputeWorkers=7, computeWorkerKind=applier.CW_SUBPROC)
    assert poolfactory.pool_width(RecordingPool(parallelism=3), style) == 7
    assert poolfactory.pool_width(RecordingPool(parallelism=3), applier.ConcurrencyStyle()) == 3


def countTasks(info, inputs, outputs, otherArgs):
    outputs.out = inputs.img


def test_a_multiprocessing_pool_is_sized_as_long_lived_workers(tmp_path):
    # Its processes live from task to task: start-up is paid once per process, so tasks
    # are sized as in workers mode (8 per slot, >= 0.25 Mpix), not as one process each
    # (>= 4 Mpix, which left Pool(8) on a 4096 x 4096 raster with 4 tasks).
    assert len(grid.task_sizes(256, 8, False, "workers", 256 * 256)) >= 8 * 8
    array = np.arange(1024 * 1024, dtype=np.int32).reshape(1, 1024, 1024) % 251
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array.astype(np.uint8))
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        controls.setPool(pool)
        result = applier.apply(countTasks, infiles, outfiles, applier.OtherInputs(), controls)
    # 16 blocks of 256 x 256 on 2 processes: tasks of 4 blocks (array mode: one task).
    sizes = grid.task_sizes(16, 2, False, "workers", 256 * 256)
    assert len(result.otherArgsList) == len(sizes) == 4
    np.testing.assert_array_equal(readRaster(outfiles.out), array)


def test_tasks_are_capped_whatever_the_raster_size():
    blockPixels = 256 * 256
    cap = grid.MAX_TASK_PIXELS // blockPixels
    for numBlocks in (10_000, 40_000, 160_000):
        assert max(grid.task_sizes(numBlocks, 1, False, "array", blockPixels)) == cap
    assert max(grid.task_sizes(100_000, 2, False, "workers", blockPixels)) == cap
    assert grid.task_sizes(640, 2, False, "workers", blockPixels)[0] == 40  # 16 tasks' worth


def test_tasks_shrink_as_the_blocks_run_out_so_the_slots_finish_together():
    for numBlocks, slots, how, smallest in ((625, 2, "workers", 4), (10_000, 3, "array", 64),
                                            (5_000, 8, "threads", 1)):
        sizes = grid.task_sizes(numBlocks, slots, False, how, 256 * 256)
        assert sum(sizes) == numBlocks
        assert sizes == sorted(sizes, reverse=True)
        # No task holds more than its share of the blocks left, so no slot is still busy
        # with a large task when the others run out of work.
        left = numBlocks
        for size in sizes:
            assert size <= max(smallest, -(-left // (2 * slots)))
            left -= size
        assert sizes[-2] == smallest and sizes[-1] <= smallest
    assert grid.task_sizes(7, 2, True, "workers", 256 * 256) == [1] * 7


def test_num_compute_workers_means_workers_mode():
    style = applier.ConcurrencyStyle(numComputeWorkers=3, computeWorkerKind=applier.CW_SUBPROC,
                                     computeWorkerExtraParams={"progress": False})
    pool = poolfactory.make_pool(style, None)
    try:
        assert poolfactory.is_workers_mode(pool) and pool.max_workers == 3
        assert poolfactory.pool_width(pool, style) == 3
    finally:
        pool.terminate()
    single = applier.ConcurrencyStyle(numComputeWorkers=3, computeWorkerKind=applier.CW_SUBPROC,
                                      singleBlockComputeWorkers=True)
    pool = poolfactory.make_pool(single, None)
    try:
        assert not poolfactory.is_workers_mode(pool)
    finally:
        pool.terminate()
    override = applier.ConcurrencyStyle(numComputeWorkers=3, computeWorkerKind=applier.CW_SUBPROC,
                                        computeWorkerExtraParams={"mode": "array"})
    pool = poolfactory.make_pool(override, None)
    try:
        assert not poolfactory.is_workers_mode(pool)
    finally:
        pool.terminate()


def test_blocks_travel_in_files_that_are_removed(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()  # where conftest puts every test's work_dirs
    files = []
    real = poolfactory.Scratch.file

    def spy(self, name):
        files.append(real(self, name))
        return files[-1]
    monkeypatch.setattr(poolfactory.Scratch, "file", spy)
    from poolparty_raster import LocalPool
    with LocalPool(2, mode="workers", progress=False) as pool:
        runOn(tmp_path, pool, shape=(2, 90, 100), window=32, singleBlockComputeWorkers=True)
    assert len(files) == 12 and all(f.endswith(".blocks") for f in files)
    assert len(set(files)) < len(files)  # a long-lived worker's tasks share its block file
    assert os.listdir(work) == []  # block files, scratch directory and work_dir all gone


def copyDyingOnce(info, inputs, outputs, otherArgs):
    """A copy whose process dies, once, halfway through a task: after the task's first
    blocks went into its worker's block file."""
    if (info.blockDefn.top, info.blockDefn.left) == (80, 80) and os.path.exists(otherArgs.flag):
        os.remove(otherArgs.flag)
        os._exit(9)
    outputs.out = inputs.img


@pytest.mark.parametrize("singleBlock", [False, True], ids=["inside-a-task", "between-tasks"])
def test_a_worker_killed_while_writing_its_blocks_loses_nothing(tmp_path, singleBlock):
    # One task: it dies with part of its region written. One block a task: the tasks it
    # finished before are read from the dead worker's block file.
    work = tmp_path / "work"
    work.mkdir()  # where conftest puts every test's work_dirs
    array = np.arange(160 * 160, dtype=np.int32).reshape((1, 160, 160))
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array)
    outfiles.out = str(tmp_path / "out.tif")
    otherArgs = applier.OtherInputs()
    otherArgs.flag = str(tmp_path / "die")
    open(otherArgs.flag, "w").close()
    controls = applier.ApplierControls()
    controls.setWindowSize(16, 16)
    from poolparty_raster import LocalPool
    with LocalPool(2, mode="workers", progress=False, polling_interval=0.2) as pool:
        controls.setPool(pool)
        controls.setConcurrencyStyle(applier.ConcurrencyStyle(singleBlockComputeWorkers=singleBlock))
        applier.apply(copyDyingOnce, infiles, outfiles, otherArgs, controls=controls)
    assert not os.path.exists(otherArgs.flag)  # it did die
    np.testing.assert_array_equal(readRaster(outfiles.out), array)
    assert os.listdir(work) == []
