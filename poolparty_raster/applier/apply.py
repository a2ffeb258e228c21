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

from poolparty_raster.applier.blockfiles import WORKER_FILE_BYTES, read_region
from poolparty_raster.applier.controls import CW_NONE, ApplierControls
from poolparty_raster.applier.gdalcache import CacheCap, input_cache_bytes, user_chose_cache
from poolparty_raster.applier.grid import (compute_working_grid, describe_rasters, group_blocks,
                                           make_blocks, reference_name, task_sizes)
from poolparty_raster.applier.poolfactory import (Scratch, how_tasks_run, make_pool, pool_width,
                                                  throttles)
from poolparty_raster.applier.reader import InputSpec, check_input_nodata, input_specs
from poolparty_raster.applier.structures import (ApplierBlockDefn, ApplierReturn,
                                                 FilenameAssociations, SinglePassReport,
                                                 Timers)
from poolparty_raster.applier.task import (PackedTaskPart, TaskPart, TaskResult, TaskRunner,
                                           TaskSpec, iter_task_blocks, new_stats)
from poolparty_raster.applier.vectors import VectorSpec, check_vector_specs, vector_or_raise
from poolparty_raster.applier.writer import OutputFile, finish_all, open_outputs

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
        infos = describe_rasters([f for _, _, f in infiles], not_a_raster=vector_or_raise)
        vector_files = {f for _, _, f in infiles if f not in infos}
        raster_infiles = _rasters_only(infiles, vector_files)
        filenames = [filename for _, _, filename in raster_infiles]
        reference = ([] if controls.referencePixgrid is not None
                     else [reference_name(raster_infiles, controls)])
        infos.update(describe_rasters([*reference, *(controls.files_for_extent or [])]))
        specs = input_specs(infiles, controls, vector_files)
        check_input_nodata([s for s in specs if isinstance(s, InputSpec)], infos)
        check_vector_specs([s for s in specs if isinstance(s, VectorSpec)])
        grid = compute_working_grid(raster_infiles, controls, infos)
        blocks = make_blocks(grid, controls.windowxsize, controls.windowysize)
        cache_bytes = None if user_chose_cache() else input_cache_bytes(
            [infos[f] for f in filenames], grid, controls.windowxsize, controls.windowysize,
            controls.overlap)
        cache_cap = CacheCap(cache_bytes)
        outputs = open_outputs(outfiles, grid, controls, cache_cap)
    spec = TaskSpec(userFunction, specs, list(outputs), grid,
                    controls.windowxsize, controls.windowysize, controls.overlap,
                    otherArgs is not None,
                    {k: o.stats_ignore for k, o in outputs.items() if o.calc_stats},
                    gdal_cache_bytes=cache_bytes)
    progress = _Progress(controls.progress, len(blocks))
    try:
        with cache_cap:
            other_args_list = _run(spec, blocks, otherArgs, outputs, timings, progress, controls)
    except BaseException:
        for output in outputs.values():
            output.abort()
        raise
    timings.pairs["walltime"].append(time.perf_counter() - started)
    single_pass = SinglePassReport()
    for output in outputs.values():
        output.report(single_pass)
    return ApplierReturn(timings, other_args_list, single_pass)


def _rasters_only(infiles: FilenameAssociations,
                  vector_files: set[str]) -> FilenameAssociations:
    """``infiles`` without its vector files, which are burnt onto the working grid and so
    take no part in making it (as in RIOS)."""
    if not vector_files:
        return infiles
    rasters = FilenameAssociations()
    for name, value in vars(infiles).items():
        if isinstance(value, (list, tuple)):
            kept = [f for f in value if str(f) not in vector_files]
            if kept:
                setattr(rasters, name, kept)
        elif str(value) not in vector_files:
            setattr(rasters, name, value)
    return rasters


def _run(spec: TaskSpec, blocks: list[ApplierBlockDefn], other_args: Any, outputs: Outputs,
         timings: Timers, progress: _Progress, controls: ApplierControls) -> list[Any]:
    if controls.pool is None and controls.concurrency.computeWorkerKind == CW_NONE:
        other_args_list = _run_in_process(spec, blocks, other_args, outputs, timings, progress)
    else:
        other_args_list = _run_on_pool(spec, blocks, other_args, outputs, timings, progress,
                                       controls)
    finish_all(outputs, timings)
    return other_args_list


def _run_in_process(spec: TaskSpec, blocks: list[ApplierBlockDefn], other_args: Any,
                    outputs: Outputs, timings: Timers, progress: _Progress) -> list[Any]:
    """Every block in this process, nothing pickled or copied: the I/O floor."""
    stats = new_stats(spec)
    clock = time.perf_counter
    for block_defn, arrays in iter_task_blocks(spec, blocks, other_args, timings, stats):
        start = clock()
        for key, array in arrays.items():
            outputs[key].write(block_defn, array)
        timings.add("writing", clock() - start)
        progress.advance(1)
    _add_stats(outputs, stats)
    return [other_args]


def _run_on_pool(spec: TaskSpec, blocks: list[ApplierBlockDefn], other_args: Any,
                 outputs: Outputs, timings: Timers, progress: _Progress,
                 controls: ApplierControls) -> list[Any]:
    style = controls.concurrency
    pool = controls.pool
    own_pool = pool is None
    if own_pool:
        pool = make_pool(style, controls.jobName)
    how = how_tasks_run(pool)
    # Threads share this process: the spec goes as it is, blocks come back in-band, and
    # each task opens its own inputs.
    threads = how == "threads"
    scratch = None
    try:
        if not threads:
            scratch = Scratch(pool)
            spec.scratch_dir = scratch.worker_path
        width = pool_width(pool, style)
        block_pixels = controls.windowxsize * controls.windowysize
        # Long-lived workers share a block file between tasks; elsewhere a task's process
        # may run nothing more, and a file it left open would stay till the end.
        spec.block_file_bytes = WORKER_FILE_BYTES if how == "workers" else 0
        groups = group_blocks(blocks, task_sizes(len(blocks), width,
                                                 style.singleBlockComputeWorkers, how,
                                                 block_pixels))
        limit = TASKS_IN_FLIGHT_PER_WORKER * width if throttles(pool) else None
        feeder = _Feeder(groups, other_args, not threads, limit)
        runner = TaskRunner(spec, pickled=not threads)
        other_args_by_task = _collect(pool, runner, feeder, scratch, spec, outputs, timings,
                                      progress)
    except BaseException:
        if own_pool:
            pool.terminate()
        raise
    finally:
        if scratch is not None:
            scratch.close()
    if own_pool:
        pool.close()
        pool.join()
    if len(other_args_by_task) != len(groups):
        raise RuntimeError(f"the pool returned {len(other_args_by_task)} of {len(groups)} tasks")
    return [other_args_by_task[i] for i in range(len(groups))]


def _collect(pool: Any, runner: TaskRunner, feeder: _Feeder, scratch: Scratch | None,
             spec: TaskSpec, outputs: Outputs, timings: Timers,
             progress: _Progress) -> dict[int, Any]:
    other_args_by_task: dict[int, Any] = {}
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
            for block_defn, arrays in _result_blocks(result, scratch, spec):
                for key, array in arrays.items():
                    outputs[key].write(block_defn, array)
            timings.add("writing", clock() - start)
            _add_stats(outputs, result.stats)
            timings.merge(result.timings)
            other_args_by_task[result.task_index] = result.other_args
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
    return other_args_by_task


def _result_blocks(result: TaskResult, scratch: Scratch | None,
                   spec: TaskSpec) -> Iterator[tuple[ApplierBlockDefn, dict]]:
    if result.arrays is not None:
        yield from zip(result.blocks, result.arrays)
        return
    region = result.region
    yield from read_region(scratch.file(region.name), region.offset, result.blocks,
                           result.layouts, spec.output_names)
    scratch.ledger.done(region)


def _add_stats(outputs: Outputs, stats: dict) -> None:
    for key, bands in stats.items():
        if bands:
            outputs[key].add_stats(bands)


class _Feeder:
    """Makes the tasks as the pool asks for them. With a ``limit`` (a pool that pulls
    tasks from a handler thread and returns results as they finish), it waits while
    ``limit`` tasks are out and unwritten, so in-band results cannot pile up faster than
    the driver writes them. A pull from the driver's own thread is never made to wait,
    which would deadlock it."""

    def __init__(self, groups: list[list[ApplierBlockDefn]], other_args: Any, pickled: bool,
                 limit: int | None):
        self.groups = groups
        # Process pools: pickled once; every task unpickles its own copy from the same bytes.
        self.other_args = cloudpickle.dumps(other_args) if pickled else other_args
        self.pickled = pickled
        self.slots = threading.Semaphore(limit) if limit else None
        self.driver_thread = threading.get_ident()
        self.aborted = False

    def tasks(self) -> Iterator[PackedTaskPart]:
        for index, group in enumerate(self.groups):
            if self.slots is not None and threading.get_ident() != self.driver_thread:
                self.slots.acquire()
            if self.aborted:
                return
            other_args = self.other_args if self.pickled else copy.deepcopy(self.other_args)
            yield TaskPart(index, group, other_args).packed()

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

    def __init__(self, progress: Any, num_blocks: int):
        self.progress = progress
        self.num_blocks = max(num_blocks, 1)
        self.blocks_done = 0
        self.last_percent: int | None = None
        self._report()

    def advance(self, num_blocks: int) -> None:
        self.blocks_done += num_blocks
        self._report()

    def _report(self) -> None:
        if self.progress is None:
            return
        percent = round(100 * self.blocks_done / self.num_blocks)
        if percent != self.last_percent:
            self.progress.setProgress(percent)
            self.last_percent = percent
