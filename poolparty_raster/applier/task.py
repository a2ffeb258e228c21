"""Worker side, tasks: a task is a run of consecutive blocks. For each it reads the inputs,
calls the user function, keeps the outputs' inner parts (overlap cut off) and the outputs'
statistics, and streams the arrays into its process's block file in the shared scratch
directory (blockfiles.py), one block at a time, so neither the worker nor the driver ever
holds a whole task's outputs."""
from __future__ import annotations

import contextlib
import functools
import os
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np

from poolparty_raster.applier.blockfiles import Layout, Region, writer_for
from poolparty_raster.applier.gdalcache import CacheCap
from poolparty_raster.applier.grid import WorkingGrid
from poolparty_raster.applier.heap import keep_freed_heap
from poolparty_raster.applier.info import BlockInfo
from poolparty_raster.applier.reader import InputReader, InputSpec, open_reader
from poolparty_raster.applier.vectors import VectorReader, VectorSpec
from poolparty_raster.applier.stats import BandStats
from poolparty_raster.applier.structures import ApplierBlockDefn, BlockAssociations, Timers
from poolparty_raster.node import serving_a_map

Key = tuple[str, int | None]


@dataclass
class TaskSpec:
    """What every task of one apply shares: pickled once per map, not once per task."""

    user_function: Callable[..., Any]
    inputs: list[InputSpec | VectorSpec]
    output_names: list[Key]
    grid: WorkingGrid
    windowxsize: int
    windowysize: int
    overlap: int
    pass_other_args: bool
    stats_ignore: dict[Key, float | None]      # outputs whose statistics are wanted
    scratch_dir: str | None = None             # as the workers see it; None: arrays in-band
    gdal_cache_bytes: int | None = None         # the workers' cap (gdalcache.py); None: GDAL's
    block_file_bytes: int = 0                   # a block file's size (blockfiles.py); 0: a task's


@dataclass
class TaskPart:
    """One task: its index, its blocks, and its own copy of otherArgs (pickled bytes for
    process pools, so that every task gets an independent copy however the pool batches).
    It goes to the pool ``packed`` as builtins: cloudpickle pickles a tuple of ints and bytes
    at pickle's own speed, where each class in it costs a module lookup (with 1-block tasks,
    most of what preparing a task costs the driver)."""

    task_index: int
    blocks: list[ApplierBlockDefn]
    other_args: Any

    def packed(self) -> PackedTaskPart:
        return (self.task_index, tuple((b.top, b.left, b.nrows, b.ncols) for b in self.blocks),
                self.other_args)

    @classmethod
    def unpacked(cls, packed: PackedTaskPart) -> TaskPart:
        task_index, blocks, other_args = packed
        return cls(task_index, [ApplierBlockDefn(*b) for b in blocks], other_args)


PackedTaskPart = tuple[int, tuple[tuple[int, int, int, int], ...], Any]


@dataclass
class TaskResult:
    """A task's outcome: its blocks, their arrays either in-band (``arrays``, one dict per
    block) or in a ``region`` of a block file in the scratch directory (``layouts`` gives
    each block's (dtype, bands) per output), the outputs' statistics per band, its otherArgs
    copy and its timings."""

    task_index: int
    blocks: list[ApplierBlockDefn]
    other_args: Any
    stats: dict[Key, list[BandStats]]
    arrays: list[dict[Key, np.ndarray]] | None = None
    region: Region | None = None
    layouts: list[Layout] = field(default_factory=list)
    timings: Timers = field(default_factory=Timers)

    def packed(self) -> tuple[Any, ...]:
        """What goes back to the driver: builtins, as a TaskPart goes out, but for the
        statistics, the arrays in-band and the user's otherArgs; the driver knows the
        blocks."""
        region = self.region
        if region is not None:  # not dataclasses.astuple: it deep-copies, at 20 us a region
            region = (region.name, region.offset, region.number, region.last)
        return (self.task_index, self.other_args, self.stats, self.arrays, region, self.layouts,
                dict(self.timings.pairs))

    @classmethod
    def unpacked(cls, packed: tuple[Any, ...], blocks: list[ApplierBlockDefn]) -> TaskResult:
        task_index, other_args, stats, arrays, region, layouts, pairs = packed
        timings = Timers()
        timings.pairs.update(pairs)
        return cls(task_index, blocks, other_args, stats, arrays,
                   None if region is None else Region(*region), layouts, timings)


class TaskRunner:
    """The function every pool runs. Holds the spec cloudpickled, so user functions defined
    anywhere (even lambdas) travel, and unpickles it once per worker process."""

    def __init__(self, spec: TaskSpec, pickled: bool):
        self._spec = spec if not pickled else None
        self._bytes = cloudpickle.dumps(spec) if pickled else None
        self._readers: list[InputReader | VectorReader] | None = None
        self._scratch_seen: bool | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_spec": None, "_bytes": self._bytes, "_readers": None, "_scratch_seen": None}

    def readers(self) -> list[InputReader | VectorReader] | None:
        """In a worker process the inputs stay open from task to task (a long-lived worker
        runs many; opening a file, or building a WarpedVRT, costs milliseconds each time).
        They close when the runner is collected or the process ends. Threads share one
        runner, and a dataset is not thread-safe: they open their own per task."""
        if self._bytes is None:
            return None
        if self._readers is None:
            stack = contextlib.ExitStack()
            spec = self.spec
            self._readers = [stack.enter_context(open_reader(s, spec.grid, spec.overlap))
                             for s in spec.inputs]
            weakref.finalize(self, stack.close)
        return self._readers

    def _scratch_visible(self) -> bool:
        """Whether this process sees the scratch directory; asked once per process (a
        stat a task is a round trip each on NFS)."""
        if self._scratch_seen is None:
            self._scratch_seen = (self.spec.scratch_dir is not None
                                  and os.path.isdir(self.spec.scratch_dir))
        return self._scratch_seen

    @functools.cached_property
    def spec(self) -> TaskSpec:
        return self._spec if self._spec is not None else cloudpickle.loads(self._bytes)

    def __call__(self, packed: PackedTaskPart) -> tuple[Any, ...]:
        """A packed TaskPart in, a packed TaskResult out."""
        part = TaskPart.unpacked(packed)
        if self._bytes is None:  # threads: the driver's cap covers them (it is process-wide)
            return self._run(part).packed()
        if serving_a_map():  # set once for the process's life (a GDAL Env costs ~0.2 ms)
            _cap_this_process(self.spec.gdal_cache_bytes)
            keep_freed_heap()
            return self._run(part).packed()
        with CacheCap(self.spec.gdal_cache_bytes):  # a process of the caller's, e.g. their pool
            return self._run(part).packed()

    def _run(self, part: TaskPart) -> TaskResult:
        spec = self.spec
        other_args = part.other_args
        if isinstance(other_args, bytes) and self._bytes is not None:
            other_args = cloudpickle.loads(other_args)
        timings = Timers()
        stats = new_stats(spec)
        result = TaskResult(part.task_index, part.blocks, other_args, stats, timings=timings)
        start = time.perf_counter()
        readers = self.readers()
        timings.add("opening", time.perf_counter() - start)
        blocks = iter_task_blocks(spec, part.blocks, other_args, timings, stats, readers)
        if self._scratch_visible():
            writer = writer_for(spec.scratch_dir, spec.block_file_bytes)
            result.region = writer.write(blocks, spec.output_names, timings, result.layouts)
        else:  # threads, or a pool whose workers cannot see the scratch directory
            result.arrays = [arrays for _, arrays in blocks]
        return result


_process_cap: CacheCap | None = None


def _cap_this_process(nbytes: int | None) -> None:
    global _process_cap
    if _process_cap is None:
        _process_cap = CacheCap(nbytes).__enter__()


def new_stats(spec: TaskSpec) -> dict[Key, list[BandStats]]:
    """Filled band by band as blocks are computed (the band count is known only then)."""
    return {key: [] for key in spec.stats_ignore}


def iter_task_blocks(spec: TaskSpec, blocks: list[ApplierBlockDefn], other_args: Any,
                     timings: Timers, stats: dict[Key, list[BandStats]],
                     readers: list[InputReader | VectorReader] | None = None) -> Iterator[
                       tuple[ApplierBlockDefn, dict[Key, np.ndarray]]]:
    """Yields each block's outputs as soon as it is computed; opens the inputs for these
    blocks unless open ``readers`` are given."""
    with contextlib.ExitStack() as stack:
        if readers is None:
            with timings.interval("opening"):
                readers = [stack.enter_context(open_reader(s, spec.grid, spec.overlap))
                           for s in spec.inputs]
        o = spec.overlap
        clock = time.perf_counter
        for block_defn in blocks:
            inputs = BlockAssociations()
            meta = {}
            start = clock()
            for reader in readers:
                array = reader.read(block_defn.top - o, block_defn.left - o,
                                    block_defn.nrows + 2 * o, block_defn.ncols + 2 * o)
                inputs[reader.spec.name, reader.spec.seq_num] = array
                meta[id(array)] = (reader.spec.filename, reader.nodata)
            read = clock()
            timings.add("reading", read - start)
            info = BlockInfo(spec.grid, block_defn, spec.windowxsize, spec.windowysize, o, meta)
            outputs = BlockAssociations()
            try:
                if spec.pass_other_args:
                    spec.user_function(info, inputs, outputs, other_args)
                else:
                    spec.user_function(info, inputs, outputs)
            except Exception as exc:
                exc.add_note(f"poolparty_raster.applier: raised by the user function on "
                             f"the block at top={block_defn.top}, left={block_defn.left} "
                             f"(rows, cols of the working grid)")
                raise
            finally:
                timings.add("userfunction", clock() - read)
            inner = _inner_outputs(outputs, spec.output_names, block_defn, o)
            if stats:
                with timings.interval("basicstats"):
                    _add_stats(stats, inner, spec.stats_ignore)
            yield block_defn, inner


def _add_stats(stats: dict[Key, list[BandStats]], inner: dict[Key, np.ndarray],
               ignore: dict[Key, float | None]) -> None:
    for key, bands in stats.items():
        array = inner[key]
        if array.dtype.kind == "c":
            continue  # GDAL's STATISTICS_* have no meaning for complex bands
        while len(bands) < array.shape[0]:
            bands.append(BandStats(ignore[key]))
        for band_stats, band in zip(bands, array):
            band_stats.add(band)


def _inner_outputs(outputs: BlockAssociations, names: list[Key], block_defn: ApplierBlockDefn,
                   o: int) -> dict[Key, np.ndarray]:
    inner = {}
    for key in names:
        try:
            array = np.asarray(outputs[key])
        except (AttributeError, IndexError, TypeError, KeyError):
            raise ValueError(f"the user function set no array for output {_label(key)} on the "
                             f"block at top={block_defn.top}, left={block_defn.left}") from None
        if array.ndim == 2:
            array = array[np.newaxis]
        expected = (block_defn.nrows + 2 * o, block_defn.ncols + 2 * o)
        if array.ndim != 3 or array.shape[1:] != expected:
            raise ValueError(f"output {_label(key)} has shape {array.shape} on the block at "
                             f"top={block_defn.top}, left={block_defn.left}; expected "
                             f"(bands, {expected[0]}, {expected[1]})")
        if array.dtype == np.bool_:
            array = array.view(np.uint8)  # GDAL has no 1-bit type: bool is written as Byte
        elif array.dtype == np.float16:
            raise TypeError(f"output {_label(key)} is float16, which GDAL cannot write; "
                            "cast it to float32")
        inner[key] = array[:, o:o + block_defn.nrows, o:o + block_defn.ncols] if o else array
    return inner


def _label(key: Key) -> str:
    return key[0] if key[1] is None else f"{key[0]}[{key[1]}]"

