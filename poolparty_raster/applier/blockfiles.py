"""Block files: how a task's output arrays travel from a worker to the driver.

A worker appends each task's arrays, C order, block by block and outputs in ``output_names``
order, to its process's block file in the shared scratch directory, as one region; each
array's dtype and band count travel in the task's result (its rows and columns are the
block's), so reading a block is one ``preadv`` (parsing an ``.npy`` header cost nearly as
much as reading an uncompressed block).

A region is committed by the task result that names it (file, offset, region number), which
the pool writes atomically after the region is written and its file closed; nothing reads a
block file without such a result, so a killed worker's half-written region is never read.
Appending to one file per process, rather than making a file per task, saves a file creation,
a rename and a removal per task: on NFS each is a round trip, on a local disk creating and
removing files by the hundred is what costs most in a small task. A file takes regions until
it holds ``file_bytes`` (0: one region per file, where processes do not live on from task to
task); its last region's result says so, and the driver removes the file once it has read
every region of it. The file a worker still had open when it ended, one a failing task left
(its end is unknown), and regions whose result was dropped (a duplicate run) go with the
scratch directory at the end of the apply.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from poolparty_raster.applier.structures import ApplierBlockDefn, Timers
from poolparty_raster.claims import process_token
from poolparty_raster.files import write_all

Key = tuple[str, int | None]
Layout = list[tuple[str, int]]   # per output: (dtype string, bands)
SUFFIX = ".blocks"
# A worker's file takes regions up to this size: bounds what its last file keeps on disk
# after it was read (until the apply ends), while 1-block tasks of 128 KiB share one file
# 128 at a time.
WORKER_FILE_BYTES = 16 * 1024 * 1024


@dataclass
class Region:
    """Where a task's arrays are: ``offset`` bytes into ``name``, the ``number``-th region
    of that file (from 1); ``last``: the writer put no more regions in the file."""

    name: str
    offset: int
    number: int
    last: bool


class BlockWriter:
    """A process's block file in one scratch directory."""

    def __init__(self, directory: str, file_bytes: int):
        self.directory = directory
        self.file_bytes = file_bytes
        self.pid = os.getpid()
        self.name: str | None = None
        self.regions = 0
        self.size = 0

    def write(self, blocks: Iterator[tuple[ApplierBlockDefn, dict[Key, np.ndarray]]],
              output_names: list[Key], timings: Timers, layouts: list[Layout]) -> Region:
        """Append the task's arrays as one region, appending each block's layout to
        ``layouts``. Raises what the blocks raise; the file then takes no more regions."""
        if self.name is None:
            self._start()
        region = Region(self.name, self.size, self.regions + 1, False)
        fd = os.open(f"{self.directory}{os.sep}{self.name}", os.O_WRONLY | os.O_APPEND)
        try:
            for _, arrays in blocks:
                start = time.perf_counter()
                layout = []
                for key in output_names:
                    array = np.ascontiguousarray(arrays[key])
                    write_all(fd, memoryview(array))
                    self.size += array.nbytes
                    layout.append((array.dtype.str, array.shape[0]))
                layouts.append(layout)
                timings.add("blockfile", time.perf_counter() - start)
        except BaseException:
            self.name = None  # its end is unknown now: the next task starts a new file
            raise
        finally:
            os.close(fd)  # on NFS, what sends the region to the server
        self.regions = region.number
        if self.size >= self.file_bytes:
            region.last = True
            self.name = None
        return region

    def _start(self) -> None:
        self.name = process_token() + SUFFIX
        os.close(os.open(os.path.join(self.directory, self.name),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.regions = self.size = 0  # this process alone appends to it


_writer: BlockWriter | None = None


def writer_for(directory: str, file_bytes: int) -> BlockWriter:
    """This process's block writer for ``directory`` (a worker serves one apply at a time; a
    forked child starts its own)."""
    global _writer
    if _writer is None or (_writer.directory, _writer.file_bytes, _writer.pid) != (
            directory, file_bytes, os.getpid()):
        _writer = BlockWriter(directory, file_bytes)
    return _writer


def read_region(path: str, offset: int, blocks: list[ApplierBlockDefn], layouts: list[Layout],
                output_names: list[Key]
                ) -> Iterator[tuple[ApplierBlockDefn, dict[Key, np.ndarray]]]:
    """The driver's side: one block's arrays at a time, each read straight into its array
    (one system call an array)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for block_defn, layout in zip(blocks, layouts, strict=True):
            arrays = {}
            for key, (dtype, bands) in zip(output_names, layout, strict=True):
                array = np.empty((bands, block_defn.nrows, block_defn.ncols), dtype=dtype)
                view = memoryview(array).cast("B")
                while view:  # a read stops short at 2 GiB, or at the file's end
                    count = os.preadv(fd, [view], offset)
                    if count == 0:
                        raise OSError(f"block file {path} ends inside the block at "
                                      f"top={block_defn.top}, left={block_defn.left}")
                    view, offset = view[count:], offset + count
                arrays[key] = array
            yield block_defn, arrays
    finally:
        os.close(fd)


class Ledger:
    """The driver's count of the regions it has read per block file: a file whose last
    region is known and every region read is removed."""

    def __init__(self, directory: str):
        self.directory = directory
        self.read: dict[str, int] = {}
        self.last_number: dict[str, int] = {}

    def done(self, region: Region) -> None:
        self.read[region.name] = self.read.get(region.name, 0) + 1
        if region.last:
            self.last_number[region.name] = region.number
        if self.read[region.name] == self.last_number.get(region.name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.directory, region.name))
            del self.read[region.name], self.last_number[region.name]
