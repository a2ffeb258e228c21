"""``apply``: the driver. It works out the working grid and the blocks, hands groups of
blocks to a pool (or runs them in-process), and writes each task's outputs as they arrive."""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import cloudpickle

from poolparty_raster.applier.controls import CW_NONE, CW_THREADS, ApplierControls
from poolparty_raster.applier.grid import (blocksPerTask, computeWorkingGrid, groupBlocks,
                                           makeBlocks)
from poolparty_raster.applier.poolfactory import makePool, poolWidth
from poolparty_raster.applier.reader import TaskSpec, inputSpecs, iterTaskBlocks, runTask
from poolparty_raster.applier.structures import (ApplierBlockDefn, ApplierReturn,
                                                 FilenameAssociations, Timers)
from poolparty_raster.applier.writer import OutputFile, openOutputs

# Tasks handed out but not yet written, per pool worker: bounds the driver's memory when
# the pool pulls tasks lazily (multiprocessing's pools do).
TASKS_IN_FLIGHT_PER_WORKER = 2
# A pool that pulls tasks in a background thread but returns nothing until it has them all
# would wait forever on the bound; after this many seconds without a result it is lifted.
_THROTTLE_TIMEOUT = 10.0

Outputs = dict[tuple[str, int | None], OutputFile]


def apply(userFunction: Callable[..., Any], infiles: FilenameAssociations,
          outfiles: FilenameAssociations, otherArgs: Any = None,
          controls: ApplierControls | None = None) -> ApplierReturn:
    """Call ``userFunction(info, inputs, outputs[, otherArgs])`` once per block of the
    working grid and write the outputs.

    ``inputs`` holds each input's block as an array (bands, rows, cols) including the
    overlap margin; the function sets an array of that row/col shape for every name in
    ``outfiles`` (its dtype and band count become the file's). ``otherArgs`` (passed only
    when not None): run in-process (CW_NONE, no pool) the function gets this very object;
    otherwise every pool task gets its own copy, and state accumulated over blocks must be
    merged from ``ApplierReturn.otherArgsList`` (one copy per task, in task order).
    Exceptions from the function are re-raised here with a note giving the block's
    (top, left) position.
    """
    controls = controls or ApplierControls()
    timings = Timers()
    with timings.interval("setup"):
        grid = computeWorkingGrid(infiles, controls)
        blocks = makeBlocks(grid, controls.windowxsize, controls.windowysize)
        outputs = openOutputs(outfiles, grid, controls)
    template = TaskSpec(0, userFunction, inputSpecs(infiles, controls), list(outputs), grid,
                        controls.windowxsize, controls.windowysize, controls.overlap, [],
                        otherArgs, otherArgs is not None)
    progress = _Progress(controls.progress, len(blocks))
    try:
        if controls.pool is None and controls.concurrency.computeWorkerKind == CW_NONE:
            otherArgsList = _runInProcess(template, blocks, outputs, timings, progress)
        else:
            otherArgsList = _runOnPool(template, blocks, outputs, timings, progress, controls)
        for output in outputs.values():
            output.finish(timings)
    except BaseException:
        for output in outputs.values():
            output.abort()
        raise
    finally:
        progress.reset()
    return ApplierReturn(timings, otherArgsList)


def _runInProcess(template: TaskSpec, blocks: list[ApplierBlockDefn], outputs: Outputs,
                  timings: Timers, progress: _Progress) -> list[Any]:
    """Every block in this process, nothing pickled or copied: the I/O floor."""
    for blockDefn, arrays in iterTaskBlocks(replace(template, blocks=blocks), timings):
        with timings.interval("writing"):
            for key, array in arrays.items():
                outputs[key].write(blockDefn, array)
        progress.advance(1)
    return [template.otherArgs]


def _runOnPool(template: TaskSpec, blocks: list[ApplierBlockDefn], outputs: Outputs,
               timings: Timers, progress: _Progress, controls: ApplierControls) -> list[Any]:
    style = controls.concurrency
    pool = controls.pool
    ownPool = pool is None
    if ownPool:
        pool = makePool(style, controls.jobName)
    width = poolWidth(pool, style)
    groups = groupBlocks(blocks, blocksPerTask(len(blocks), width, style.singleBlockComputeWorkers))
    # Threads share this process: TaskSpec objects go as they are (otherArgs still copied).
    pickled = not (ownPool and style.computeWorkerKind == CW_THREADS)
    feeder = _Feeder(groups, template, pickled, TASKS_IN_FLIGHT_PER_WORKER * width)
    otherArgsByTask: dict[int, Any] = {}
    try:
        results = iter(pool.imap_unordered(runTask, feeder.tasks()))
        while True:
            with timings.interval("waiting"):
                result = next(results, None)
            if result is None:
                break
            with timings.interval("writing"):
                for blockDefn, arrays in result.blocks:
                    for key, array in arrays.items():
                        outputs[key].write(blockDefn, array)
            timings.merge(result.timings)
            otherArgsByTask[result.taskIndex] = result.otherArgs
            feeder.done()
            progress.advance(len(result.blocks))
    except BaseException:
        feeder.abort()
        if ownPool:
            pool.terminate()
        raise
    if ownPool:
        pool.close()
        pool.join()
    if len(otherArgsByTask) != len(groups):
        raise RuntimeError(f"the pool returned {len(otherArgsByTask)} of {len(groups)} tasks")
    return [otherArgsByTask[i] for i in range(len(groups))]


class _Feeder:
    """Makes the tasks as the pool asks for them. When the pool pulls from another thread,
    it waits while ``limit`` tasks are out and unwritten, so finished results cannot pile
    up faster than the driver writes them. A pool that pulls in the driver's own thread
    (taking all tasks up front) is never made to wait, which would deadlock it."""

    def __init__(self, groups: list[list[ApplierBlockDefn]], template: TaskSpec,
                 pickled: bool, limit: int):
        self.groups = groups
        self.template = template
        self.pickled = pickled
        self.slots = threading.Semaphore(limit)
        self.driverThread = threading.get_ident()
        self.throttling = True
        self.aborted = False

    def tasks(self) -> Iterator[TaskSpec | bytes]:
        for index, group in enumerate(self.groups):
            if self.throttling and threading.get_ident() != self.driverThread:
                self.throttling = self.slots.acquire(timeout=_THROTTLE_TIMEOUT)
            if self.aborted:
                return
            task = replace(self.template, taskIndex=index, blocks=group,
                           otherArgs=copy.deepcopy(self.template.otherArgs))
            yield cloudpickle.dumps(task) if self.pickled else task

    def done(self) -> None:
        self.slots.release()

    def abort(self) -> None:
        self.aborted = True
        self.slots.release(len(self.groups) + 1)


class _Progress:
    """Drives a RIOS-style progress object (setTotalSteps, setProgress, reset) in percent."""

    def __init__(self, progress: Any, numBlocks: int):
        self.progress = progress
        self.numBlocks = max(numBlocks, 1)
        self.blocksDone = 0
        if progress is not None:
            progress.setTotalSteps(100)
            progress.setProgress(0)

    def advance(self, numBlocks: int) -> None:
        if self.progress is not None:
            self.blocksDone += numBlocks
            self.progress.setProgress(int(100 * self.blocksDone / self.numBlocks))

    def reset(self) -> None:
        if self.progress is not None:
            self.progress.reset()
