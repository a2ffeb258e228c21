"""The driver's loose results (workdir.py's): read under the name that holds each (a file of
its own, a link to a worker's result log, or a batch name of several chunks), small ones kept
from the read for the reduce that archives them, and removed once archived or discarded (a
batch name once all its chunks are)."""
from __future__ import annotations

import os

from poolparty_raster import resultlog
from poolparty_raster.loose import LooseView
from poolparty_raster.names import loose_name, parse_batch_name

KEEP_RESULT_BYTES = 16 << 10   # a result read loose up to this size is kept for its reduce,
KEEP_RESULTS_BYTES = 16 << 20  # as long as those kept add up to no more than this,
KEPT_RESULT_OVERHEAD = 150     # counting what the dict holds for each


LOGS_HELD = 8  # result logs the driver holds open to read from (a worker writes one at a time)


class ResultReader:
    """The driver's reads of loose results: a plain file's bytes, or the record of a result
    linked to a log (through a LogIndex). The logs read last are held open, so that a result
    linked to one of them is a stat and a pread, not an open, a stat, two preads and a close.
    ``close`` lets them go: before the driver removes a result, which may be a log's last
    name (on NFS a file open when its last name goes is kept as a .nfs file), and when it is
    done."""

    def __init__(self) -> None:
        self.index = resultlog.LogIndex()
        self._held: dict[tuple[int, int], tuple[int, bytes]] = {}  # (dev, inode): fd, head

    def read(self, path: str, chunk: int, name: str, info: os.stat_result | None = None) -> bytes:
        """The result of ``chunk`` at ``path`` (whose status is ``info``, where the caller
        knows it: a batch name's holds for all its chunks); FileNotFoundError when there is
        none, ValueError when it is damaged."""
        if self._held:
            info = info or os.stat(path)
            held = self._held.get((info.st_dev, info.st_ino))  # open: the same file
            if held is not None:
                return self.index.read(held[0], chunk, name, held[1], info)
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(fd, resultlog.HEAD_SIZE, 0)
            if resultlog.is_log(head):
                record = self.index.read(fd, chunk, name, head)
                info = os.fstat(fd)
                if len(self._held) >= LOGS_HELD:
                    self.close(1)
                self._held[(info.st_dev, info.st_ino)] = (fd, head)
                fd = -1
                return record
            parts = [head]
            while block := os.pread(fd, 1 << 20, sum(map(len, parts))):
                parts.append(block)
            return b"".join(parts)
        finally:
            if fd >= 0:
                os.close(fd)

    def close(self, count: int | None = None) -> None:
        """Close the logs held open (the ``count`` opened first)."""
        for key in list(self._held)[:count]:
            os.close(self._held.pop(key)[0])


class LooseResults:
    """Loose results of one work_dir, by chunk, as the driver's last scan (``view``) names
    them."""

    def __init__(self, directory: str, view: LooseView):
        self.directory = directory
        self._view = view
        self._reader = ResultReader()  # holds the logs read last open
        # Results read loose, small ones kept for the reduce that archives them: a second read
        # each (an open, two preads, a stat) was half of what a reduce cost.
        self._kept: dict[int, bytes] = {}
        self._kept_bytes = 0
        # The status of each batch name read: one stat serves all its chunks (its records
        # were complete at its link, so the log's size then covers them).
        self._batch_status: dict[str, os.stat_result] = {}

    def _path(self, name: str) -> str:
        return f"{self.directory}{os.sep}{name}"

    def read(self, chunk: int) -> bytes:
        """The chunk's loose result, kept for its reduce where it is small;
        FileNotFoundError where it has none, ValueError where it is damaged."""
        data = self._read(chunk)
        if (len(data) <= KEEP_RESULT_BYTES and chunk not in self._kept
                and self._kept_bytes + len(data) <= KEEP_RESULTS_BYTES):
            self._kept[chunk] = data
            self._kept_bytes += len(data) + KEPT_RESULT_OVERHEAD
        return data

    def for_archive(self, chunk: int) -> bytes:
        """The chunk's result for its archive: as ``read`` kept it, else read now. A loose
        result never changes: only the driver removes one (``remove`` forgets it), and a
        chunk's next result cannot be made while one is there."""
        data = self.forget(chunk)
        return data if data is not None else self._read(chunk)

    def _read(self, chunk: int) -> bytes:
        name = self._view.result_name(chunk)
        path = self._path(name)
        if parse_batch_name(name) is not None:
            status = self._batch_status.get(name)
            if status is None:
                status = self._batch_status[name] = os.stat(path)
            return self._reader.read(path, chunk, name, status)
        return self._reader.read(path, chunk, name)

    def forget(self, chunk: int) -> bytes | None:
        """Let go of the chunk's kept result, returned (None where none was kept)."""
        data = self._kept.pop(chunk, None)
        if data is not None:
            self._kept_bytes -= len(data) + KEPT_RESULT_OVERHEAD
        return data

    def remove(self, chunks: list[int]) -> int:
        """Remove the names of these chunks' loose results (archived, or discarded): a
        chunk's own, and a batch's once every chunk of it is archived or discarded. Returns
        the number of names removed."""
        self._reader.close()  # a log's last name may go: on NFS an open one stays as .nfs
        removed = 0
        for chunk in chunks:
            self.forget(chunk)
            for name in self._view.drop_result(chunk):
                self._batch_status.pop(name, None)
                try:
                    os.unlink(self._path(name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def adopt(self, chunk: int) -> bool:
        """Commit a complete record of ``chunk`` that a worker appended to its log but had
        not linked when it died (a result it held for a batch): link the chunk's result name
        to that log, as the worker would have. True where the chunk has a result name now.
        Asked for a dead worker's chunk that has no result, before it is run again."""
        for log in self._view.logs:
            path = self._path(log)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                self._reader.index.read(fd, chunk, log)  # ValueError: no intact record
            except ValueError:
                continue
            finally:
                os.close(fd)
            try:
                os.link(path, self._path(loose_name(chunk, "result")))
            except FileExistsError:  # a result came meanwhile: the first wins
                pass
            except FileNotFoundError:  # the log's name went meanwhile (its worker retired it)
                continue
            return True
        return False

    def close(self) -> None:
        self._reader.close()
