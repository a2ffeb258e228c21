"""``apply``: the driver. It works out the working grid and the blocks, hands runs of blocks
to a pool (or runs them in-process), and writes each task's outputs as they arrive, one
block at a time.

Memory stays bounded whatever the raster size: tasks are capped in pixels (grid.py); a
worker streams its blocks into a block file as it computes them; the driver reads them back
one block at a time; results that arrive faster than the driver writes wait on disk. Where
a pool pulls tasks lazily (multiprocessing's pools, threads, whose blocks come back in-band),
only a bounded number are out at a time."""
from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from poolparty_raster.applier.blockfiles import WORKER_FILE_BYTES, readRegion
from poolparty_raster.applier.controls import CW_NONE, ApplierControls
from poolparty_raster.applier.gdalcache import CacheCap, inputCacheBytes, userChoseCache
from poolparty_raster.applier.grid import (computeWorkingGrid, describeRasters, groupBlocks,
                                           makeBlocks, referenceName, taskSizes)
from poolparty_raster.applier.poolfactory import (Scratch, howTasksRun, makePool, poolWidth,
                                                  throttles)
from poolparty_raster.applier.reader import checkInputNoData, inputSpecs
from poolparty_raster.applier.structures import (ApplierBlockDefn, ApplierReturn,
                                                 FilenameAssociations, SinglePassReport,
                                                 Timers)
from poolparty_raster.applier.task import (PackedTaskPart, TaskPart, TaskResult, TaskRunner,
                                           TaskSpec, iterTaskBlocks, newStats)
from poolparty_raster.applier.writer import OutputFile, finishAll, openOutputs

# Tasks handed out but not yet written, per worker, where tasks are handed out lazily.
TASKS_IN_FLIGHT_PER_WORKER = 2

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
    started = time.perf_counter()
    with timings.interval("setup"):
        filenames = [filename for _, _, filename in infiles]
        infos = describeRasters([*filenames, referenceName(infiles, controls),
                                 *(controls.filesForExtent or [])])
        specs = inputSpecs(infiles, controls)
        checkInputNoData(specs, infos)
        grid = computeWorkingGrid(infiles, controls, infos)
        blocks = makeBlocks(grid, controls.windowxsize, controls.windowysize)
        cacheBytes = None if userChoseCache() else inputCacheBytes(
            [infos[f] for f in filenames], grid, controls.windowxsize, controls.windowysize,
            controls.overlap)
        cacheCap = CacheCap(cacheBytes)
        outputs = openOutputs(outfiles, grid, controls, cacheCap)
    spec = TaskSpec(userFunction, specs, list(outputs), grid,
                    controls.windowxsize, controls.windowysize, controls.overlap,
                    otherArgs is not None,
                    {k: o.statsIgnore for k, o in outputs.items() if o.calcStats},
                    gdalCacheBytes=cacheBytes)
    progress = _Progress(controls.progress, len(blocks))
    try:
        with cacheCap:
            otherArgsList = _run(spec, blocks, otherArgs, outputs, timings, progress, controls)
    except BaseException:
        for output in outputs.values():
            output.abort()
        raise
    timings.pairs["walltime"].append(time.perf_counter() - started)
    singlePass = SinglePassReport()
    for output in outputs.values():
        output.report(singlePass)
    return ApplierReturn(timings, otherArgsList, singlePass)


def _run(spec: TaskSpec, blocks: list[ApplierBlockDefn], otherArgs: Any, outputs: Outputs,
         timings: Timers, progress: _Progress, controls: ApplierControls) -> list[Any]:
    if controls.pool is None and controls.concurrency.computeWorkerKind == CW_NONE:
        otherArgsList = _runInProcess(spec, blocks, otherArgs, outputs, timings, progress)
    else:
        otherArgsList = _runOnPool(spec, blocks, otherArgs, outputs, timings, progress,
                                   controls)
    finishAll(outputs, timings)
    return otherArgsList


def _runInProcess(spec: TaskSpec, blocks: list[ApplierBlockDefn], otherArgs: Any,
                  outputs: Outputs, timings: Timers, progress: _Progress) -> list[Any]:
    """Every block in this process, nothing pickled or copied: the I/O floor."""
    stats = newStats(spec)
    clock = time.perf_counter
    for blockDefn, arrays in iterTaskBlocks(spec, blocks, otherArgs, timings, stats):
        start = clock()
        for key, array in arrays.items():
            outputs[key].write(blockDefn, array)
        timings.add("writing", clock() - start)
        progress.advance(1)
    _addStats(outputs, stats)
    return [otherArgs]


def _runOnPool(spec: TaskSpec, blocks: list[ApplierBlockDefn], otherArgs: Any,
               outputs: Outputs, timings: Timers, progress: _Progress,
               controls: ApplierControls) -> list[Any]:
    style = controls.concurrency
    pool = controls.pool
    ownPool = pool is None
    if ownPool:
        pool = makePool(style, controls.jobName)
    how = howTasksRun(pool)
    # Threads share this process: the spec goes as it is, blocks come back in-band, and
    # each task opens its own inputs.
    threads = how == "threads"
    scratch = None
    try:
        if not threads:
            scratch = Scratch(pool)
            spec.scratchDir = scratch.workerPath
        width = poolWidth(pool, style)
        blockPixels = controls.windowxsize * controls.windowysize
        # Long-lived workers share a block file between tasks; elsewhere a task's process
        # may run nothing more, and a file it left open would stay till the end.
        spec.blockFileBytes = WORKER_FILE_BYTES if how == "workers" else 0
        groups = groupBlocks(blocks, taskSizes(len(blocks), width,
                                               style.singleBlockComputeWorkers, how, blockPixels))
        limit = TASKS_IN_FLIGHT_PER_WORKER * width if throttles(pool) else None
        feeder = _Feeder(groups, otherArgs, not threads, limit)
        runner = TaskRunner(spec, pickled=not threads)
        otherArgsByTask = _collect(pool, runner, feeder, scratch, spec, outputs, timings,
                                   progress)
    except BaseException:
        if ownPool:
            pool.terminate()
        raise
    finally:
        if scratch is not None:
            scratch.close()
    if ownPool:
        pool.close()
        pool.join()
    if len(otherArgsByTask) != len(groups):
        raise RuntimeError(f"the pool returned {len(otherArgsByTask)} of {len(groups)} tasks")
    return [otherArgsByTask[i] for i in range(len(groups))]


def _collect(pool: Any, runner: TaskRunner, feeder: _Feeder, scratch: Scratch | None,
             spec: TaskSpec, outputs: Outputs, timings: Timers,
             progress: _Progress) -> dict[int, Any]:
    otherArgsByTask: dict[int, Any] = {}
    results: Any = None
    clock = time.perf_counter  # per task, where a context manager costs more than the work
    try:
        tasks = feeder.tasks()
        if feeder.slots is None:  # every task at once: this package's pools run a list as one
            tasks = list(tasks)   # map, where they read a generator in batches, a map each
        results = iter(pool.imap_unordered(runner, tasks))
        while True:
            start = clock()
            packed = next(results, None)
            timings.add("waiting", clock() - start)
            if packed is None:
                break
            result = TaskResult.unpacked(packed, feeder.groups[packed[0]])
            start = clock()
            for blockDefn, arrays in _resultBlocks(result, scratch, spec):
                for key, array in arrays.items():
                    outputs[key].write(blockDefn, array)
            timings.add("writing", clock() - start)
            _addStats(outputs, result.stats)
            timings.merge(result.timings)
            otherArgsByTask[result.taskIndex] = result.otherArgs
            feeder.done()
            progress.advance(len(result.blocks))
    except BaseException:
        feeder.abort()
        # A pool of this package cancels the map's jobs when its result iterator closes;
        # left to the garbage collector, they would run on.
        close = getattr(results, "close", None)
        if close is not None:
            close()
        raise
    return otherArgsByTask


def _resultBlocks(result: TaskResult, scratch: Scratch | None,
                  spec: TaskSpec) -> Iterator[tuple[ApplierBlockDefn, dict]]:
    if result.arrays is not None:
        yield from zip(result.blocks, result.arrays)
        return
    region = result.region
    yield from readRegion(scratch.file(region.name), region.offset, result.blocks,
                          result.layouts, spec.outputNames)
    scratch.ledger.done(region)


def _addStats(outputs: Outputs, stats: dict) -> None:
    for key, bands in stats.items():
        if bands:
            outputs[key].addStats(bands)


class _Feeder:
    """Makes the tasks as the pool asks for them. With a ``limit`` (a pool that pulls
    tasks from a handler thread and returns results as they finish), it waits while
    ``limit`` tasks are out and unwritten, so in-band results cannot pile up faster than
    the driver writes them. A pull from the driver's own thread is never made to wait,
    which would deadlock it."""

    def __init__(self, groups: list[list[ApplierBlockDefn]], otherArgs: Any, pickled: bool,
                 limit: int | None):
        self.groups = groups
        # Process pools: pickled once; every task unpickles its own copy from the same bytes.
        self.otherArgs = cloudpickle.dumps(otherArgs) if pickled else otherArgs
        self.pickled = pickled
        self.slots = threading.Semaphore(limit) if limit else None
        self.driverThread = threading.get_ident()
        self.aborted = False

    def tasks(self) -> Iterator[PackedTaskPart]:
        for index, group in enumerate(self.groups):
            if self.slots is not None and threading.get_ident() != self.driverThread:
                self.slots.acquire()
            if self.aborted:
                return
            otherArgs = self.otherArgs if self.pickled else copy.deepcopy(self.otherArgs)
            yield TaskPart(index, group, otherArgs).packed()

    def done(self) -> None:
        if self.slots is not None:
            self.slots.release()

    def abort(self) -> None:
        self.aborted = True
        if self.slots is not None:
            self.slots.release(len(self.groups) + 1)


class _Progress:
    """Drives a RIOS progress object as RIOS 2's applier does: ``setProgress(percent)``
    alone (RIOS's own progress classes count to 100 unless told otherwise), from 0 to 100
    in whole percent of the blocks written, only when the percentage changes. Objects with
    nothing but setProgress work, as with RIOS."""

    def __init__(self, progress: Any, numBlocks: int):
        self.progress = progress
        self.numBlocks = max(numBlocks, 1)
        self.blocksDone = 0
        self.lastPercent: int | None = None
        self._report()

    def advance(self, numBlocks: int) -> None:
        self.blocksDone += numBlocks
        self._report()

    def _report(self) -> None:
        if self.progress is None:
            return
        percent = round(100 * self.blocksDone / self.numBlocks)
        if percent != self.lastPercent:
            self.progress.setProgress(percent)
            self.lastPercent = percent
