"""Result logs: how a long-lived worker (workers mode) stores its chunks' results cheaply.

A worker appends each result, as one framed record, to its own log in the work_dir
(``results.<host>-<pid>-<ns>``, held open), closes a duplicate of its descriptor (which
flushes it, as closing the file would), and only then makes the chunk's result name
(``chunk-NNNNNN.result``) a hard link to the log. The link is the commit, as the rename of a
result file is elsewhere: exactly one process makes a name, also on NFS, the record is
complete and (closing the file flushed it to an NFS server) readable before the name exists,
and a worker killed while it appends leaves a torn tail that no name points at. A link
allocates nothing, where a new file a chunk cost the slowest metadata operation there is: on
this project's test machine a file creation costs 0.25-0.5 ms of kernel time, a link 0.02.

A log starts with its header, written when the log is created, before any record and any link
to it: ``MAGIC``, the format version (u8, ``VERSION``) and the log's id (16 random bytes).
Records follow: ``MAGIC``, chunk (u64), payload length (u64), CRC-32 of the payload (u32),
payload; little-endian. A plain result file (array mode, or a filesystem without hard links)
starts with a pickle's protocol byte instead, so a reader tells the two apart by the first
bytes. The driver knows a log by its device, inode and id: a filesystem reuses a freed log's
inode for a new log, whose records lie elsewhere.

A worker running a run of fast chunks commits their results together (``batching``): each
record is appended as its chunk ends, and one flush and one link, ``chunk-NNNNNN+K.result``
(names.batch_result_name), commit the K consecutive chunks at once; the driver reads each
record through that name, by chunk number. Records appended but not linked when their worker
died are complete in its log, where the driver finds them (LooseResults.adopt).

A log takes records until it holds ``max_bytes`` or ``max_records``; then its worker removes
the log's own name and starts another, and the log's space is freed once the driver has
reduced (unlinked) the results that point at it. A worker removes its last log's name when it
ends; the driver removes the names that killed workers left when the map ends.
"""
from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from typing import Protocol

from poolparty_raster.claimfiles import NO_HARD_LINKS, out_of_links, process_token
from poolparty_raster.files import atomic_write, write_all
from poolparty_raster.names import RESULT_LOG_PREFIX, batch_result_name, loose_name

MAGIC = b"PPRL"
VERSION = 1
_LOG_HEADER = struct.Struct("<4sB16s")  # a log's: MAGIC, VERSION, its id
HEAD_SIZE = _LOG_HEADER.size
_HEADER = struct.Struct("<4sQQI")  # a record's
_PARSE_BYTES = 64 * 1024  # a parse reads the records' headers this many bytes at a time
IDLE_READS = 1 << 16  # the driver's index forgets a log not read for this many reads
LOG_BYTES = 16 * 1024 * 1024
LOG_RECORDS = 4096  # far below any filesystem's limit on links to one file (ext4: 65,000)
# A worker commits the results it holds for a batch at the latest this long after the first
# (seconds): a run is sized to take about as long (claimmaker.RUN_SECONDS), so a batch is a
# run's results, and a finished chunk waits no longer than that to count as done.
HELD_SECONDS = 0.05
HELD_BYTES = 1 << 20  # and once they add up to this much: what a worker holds in memory


class Publisher(Protocol):
    """What commits a chunk's result for the process that ran it: its ResultLog (workers
    mode), or LocalPool's fork server (forkoutput.PipedCaptures, array mode)."""

    def publish(self, destination: str, chunk: int, payload: bytes) -> bool:
        """Commit ``payload`` under ``destination``; False where the caller must write a file
        of its own (no hard links)."""


def is_log_name(name: str) -> bool:
    return name.startswith(RESULT_LOG_PREFIX)


def is_log(head: bytes) -> bool:
    """Whether a result file's first bytes are a result log's, not a pickle's."""
    return head[:len(MAGIC)] == MAGIC


class ResultLog:
    """A worker's side: ``publish`` a chunk's result under its final name, at once or, while
    ``batching``, with the next ones under one batch name (``commit``)."""

    def __init__(self, directory: str, max_bytes: int = LOG_BYTES, max_records: int = LOG_RECORDS,
                 readers_elsewhere: bool = True):
        self.directory = directory
        # False: whoever reads the results does so on this machine (LocalPool's fork server),
        # through this machine's client, which has the records without a flush.
        self.readers_elsewhere = readers_elsewhere
        self.max_bytes, self.max_records = max_bytes, max_records
        self.path: str | None = None
        self.records = 0
        self.links = 0  # names linked to this log: what a filesystem's limit counts
        self.size = 0  # bytes in the log: this worker alone appends to it
        self._fd = -1  # the log's, held open while it takes records
        self.hard_links = True  # False: this filesystem has none; the caller writes files
        self.linked = False  # whether a link was made: the filesystem has hard links
        self.batching = False  # publish holds results for one commit of consecutive chunks
        # Results appended for a batch but not committed (kept, should they have to be written
        # again to a new log), and the log they were appended to.
        self._held: list[tuple[int, bytes]] = []  # (chunk, payload)
        self._held_in: str | None = None
        self._held_bytes = 0
        self._held_since = 0.0  # monotonic seconds: when the first of them was held
        self._lock = threading.Lock()  # the worker's watch thread commits too (commit_due)

    def publish(self, destination: str, chunk: int, payload: bytes) -> bool:
        """Append the record and link ``destination`` to the log; while ``batching``, append
        it and hold its link for ``commit`` (held results of other chunks than the one
        before are committed first: a batch is of consecutive chunks). False (nothing
        published) when the filesystem has no hard links: the caller writes a file. A
        result already under the name (a duplicate run, or an NFS link retransmitted) is
        kept: the first result wins.

        A held record is written at once, not flushed: the kernel flushes it when the
        process dies, so the driver finds the records of a killed worker in its log
        (looseresults.LooseResults.adopt) and runs none of them again; a node's crash loses
        them (their chunks run again)."""
        if not self.hard_links:
            return False
        with self._lock:
            if self._held and (not self.batching or chunk != self._held[-1][0] + 1
                               or self._held_bytes >= HELD_BYTES):
                self._commit()
            if not self.batching or not self.linked:  # the first link: are there any?
                return self._append_and_link([(chunk, payload)], destination)
            if not self._held:
                self._held_since = time.monotonic()
                if self.path is None:
                    self._start()
                self._held_in = self.path
            self._held.append((chunk, payload))
            self._held_bytes += len(payload)
            if self._held_in == self.path:
                self._append([(chunk, payload)], flush=False)
            return True

    def commit_due(self) -> float | None:
        """When the held results must be committed (monotonic seconds), None if none is."""
        return self._held_since + HELD_SECONDS if self._held else None

    def commit(self) -> None:
        """Commit the held results: one write, one flush and one link, named
        ``chunk-NNNNNN+K.result`` (names.batch_result_name), or the chunk's own result name
        for one; files of their own where the filesystem turns out to have no hard links."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        """Commit the held results; should it fail, they stay held (the next commit tries
        again, in a new log where this one was retired)."""
        held = self._held
        if not held:
            return
        first, count = held[0][0], len(held)
        name = loose_name(first, "result") if count == 1 else batch_result_name(first, count)
        # Appended already, unless their log was retired since (an append failed).
        appended = self._held_in is not None and self._held_in == self.path
        try:
            if not self._append_and_link(held, os.path.join(self.directory, name), appended):
                for chunk, payload in held:
                    atomic_write(os.path.join(self.directory, loose_name(chunk, "result")),
                                 payload, durable=False)
        except BaseException:
            self._held_since = time.monotonic()  # due again in HELD_SECONDS, not at once
            raise
        self._held, self._held_bytes, self._held_in = [], 0, None

    def close(self) -> None:
        """Commit what is held, and remove the log's own name; the results linked to it stay
        readable."""
        with self._lock:
            try:
                self._commit()
            finally:
                self._retire()

    def _append_and_link(self, held: list[tuple[int, bytes]], destination: str,
                         appended: bool = False) -> bool:
        """Append ``held``'s records (unless ``appended``: flush them), and link
        ``destination`` to the log; False where the filesystem has no hard links."""
        path = self._flush() if appended else self._append(held)
        try:
            os.link(path, destination)
        except FileExistsError:
            pass
        except FileNotFoundError:
            # The log's name is gone (the driver removes those of ended workers at the end
            # of a map): a new log in the work_dir, if it is still there, takes the records.
            self._retire()
            os.link(self._append(held), destination)
        except OSError as exc:
            if out_of_links(exc, self.links):  # the log takes no more links
                self._retire()
                return self._append_and_link(held, destination)
            if exc.errno not in NO_HARD_LINKS:
                raise
            self.hard_links = False
            self._retire()
            return False
        self.links += 1
        self.linked = True
        if self.records >= self.max_records or self.size >= self.max_bytes:
            self._retire()
        return True

    def _append(self, held: list[tuple[int, bytes]], flush: bool = True) -> str:
        records = b"".join(_HEADER.pack(MAGIC, chunk, len(payload), zlib.crc32(payload)) + payload
                           for chunk, payload in held)
        if self.path is None:
            self._start()
        try:
            write_all(self._fd, records)
            if flush:
                self._flush()
        except BaseException:
            self._retire()  # its end is unknown now: later records go to a new log
            raise
        self.size += len(records)
        self.records += len(held)
        return self.path

    def _flush(self) -> str:
        """Closing a descriptor is what sends its writes to an NFS server (and a FUSE
        filesystem's flush): closing a duplicate does it for the log, held open, so the
        records are readable elsewhere before their link exists, without an open (a round
        trip) a commit."""
        assert self.path is not None
        if self.readers_elsewhere:
            os.close(os.dup(self._fd))
        return self.path

    def _start(self) -> None:
        """A new log, its header written before any record (and so before any link to it)."""
        path = os.path.join(self.directory, RESULT_LOG_PREFIX + process_token())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            write_all(fd, _LOG_HEADER.pack(MAGIC, VERSION, os.urandom(16)))
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        self.path, self._fd, self.records, self.links, self.size = path, fd, 0, 0, HEAD_SIZE

    def _retire(self) -> None:
        if self.path is not None:
            os.close(self._fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.path = None


class LogIndex:
    """The driver's side: where each chunk's record is, per log (by device, inode and id),
    parsed incrementally, so that reading every result of a log costs one pass over it.

    The driver reads a result twice, for the consumer and when a reduce archives it (and
    removes its name), so a log has two passes, each advanced by a read that finds nothing in
    it: the first serves each record's first read, the second, lagging behind, its second. An
    entry goes at the read it served: the index holds the records not yet read twice, not one
    entry per chunk of the map. A read after that (a third), or one that a wrong entry fails
    (a log rewritten in place), parses the log afresh. What a pass holds that no read will
    take (a result the reduce archived before the consumer had it, whose consumer reads the
    archive) goes with its log, which the index forgets when no read came to it for the last
    ``idle_reads`` reads."""

    def __init__(self, idle_reads: int = IDLE_READS) -> None:
        self._logs: dict[tuple[int, int, bytes], _Log] = {}
        self.idle_reads = idle_reads
        self._reads = 0

    def read(self, fd: int, chunk: int, name: str, head: bytes | None = None,
             info: os.stat_result | None = None) -> bytes:
        """The payload of ``chunk``'s record in the open log ``fd``, whose first ``HEAD_SIZE``
        bytes are ``head`` (read here if not given) and whose status is ``info`` (asked here
        if not given); ValueError when it holds no intact record of the chunk (the caller
        counts the result as unreadable)."""
        if head is None:
            head = os.pread(fd, HEAD_SIZE, 0)
        if len(head) < HEAD_SIZE or not is_log(head):
            raise ValueError(f"{name} is not a result log")
        _, version, log_id = _LOG_HEADER.unpack_from(head)
        if version != VERSION:
            raise ValueError(f"{name} is a result log of an unknown format ({version})")
        if info is None:
            info = os.fstat(fd)
        key = (info.st_dev, info.st_ino, log_id)
        self._reads += 1
        if self._reads % (self.idle_reads // 4 or 1) == 0:
            idle = self._reads - self.idle_reads
            self._logs = {k: log for k, log in self._logs.items() if log.last > idle}
        log = self._logs.get(key)
        if log is not None:
            try:
                return log.read(fd, chunk, name, info.st_size, self._reads)
            except ValueError:  # a wrong entry, or a record read twice already
                pass
        log = self._logs[key] = _Log()
        return log.read(fd, chunk, name, info.st_size, self._reads)


class _Log:
    """One log's index: its two passes, and when it was last read."""

    __slots__ = ("passes", "last")

    def __init__(self) -> None:
        self.passes = (_Pass(), _Pass())
        self.last = 0

    def read(self, fd: int, chunk: int, name: str, size: int, now: int) -> bytes:
        self.last = now
        for scan in self.passes:
            place = scan.find(fd, chunk, size, name)
            if place is not None:
                return _payload(fd, chunk, place, name)
        raise ValueError(f"{name} holds no complete result of chunk {chunk}")


class _Pass:
    """One pass over a log: the records parsed up to ``end`` that it has not served yet."""

    __slots__ = ("end", "where")

    def __init__(self) -> None:
        self.end = HEAD_SIZE
        self.where: dict[int, tuple[int, int]] = {}

    def find(self, fd: int, chunk: int, size: int, name: str) -> tuple[int, int] | None:
        """Where ``chunk``'s record is, taken out of the pass; None when the pass has no
        record of it left up to ``size``."""
        place = self.where.pop(chunk, None)
        if place is None and self.end < size:
            self.end = _parse(fd, self.end, size, self.where, name)
            place = self.where.pop(chunk, None)
        if place is not None and not self.where:
            self.where = {}  # an emptied dict keeps its table: a log's records' worth
        return place


def _payload(fd: int, chunk: int, place: tuple[int, int], name: str) -> bytes:
    offset, length = place
    data = os.pread(fd, _HEADER.size + length, offset)
    if len(data) == _HEADER.size + length:
        magic, number, size, crc = _HEADER.unpack_from(data)
        if (magic, number, size) == (MAGIC, chunk, length):
            payload = data[_HEADER.size:]
            if zlib.crc32(payload) != crc:
                raise ValueError(f"the result of chunk {chunk} in {name} fails its checksum")
            return payload
    raise ValueError(f"{name} holds no complete result of chunk {chunk}")


def _parse(fd: int, offset: int, size: int, where: dict[int, tuple[int, int]], name: str) -> int:
    """Index the complete records from ``offset``; returns where parsing stopped (a torn or
    not yet visible record is left for later). The last record of a chunk wins: a chunk run
    again (its first result unreadable) may be in a log twice. Reads ``_PARSE_BYTES`` at a
    time while the records are small (many headers to a read), a header at a time after a
    large one (whose payload a read would copy for nothing)."""
    block, start, ahead = b"", offset, _PARSE_BYTES  # the log's bytes from ``start``
    while offset + _HEADER.size <= size:
        if offset + _HEADER.size > start + len(block):
            block, start = os.pread(fd, min(ahead, size - offset), offset), offset
            if len(block) < _HEADER.size:
                break  # the log is shorter than its size said: truncated since
        magic, chunk, length, _ = _HEADER.unpack_from(block, offset - start)
        if magic != MAGIC:
            raise ValueError(f"{name} is not a result log at byte {offset}")
        if offset + _HEADER.size + length > size:
            break
        where[chunk] = (offset, length)
        offset += _HEADER.size + length
        ahead = _PARSE_BYTES if length < _PARSE_BYTES // 64 else _HEADER.size
    return offset
