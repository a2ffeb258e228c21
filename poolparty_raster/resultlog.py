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

A log takes records until it holds ``max_bytes`` or ``max_records``; then its worker removes
the log's own name and starts another, and the log's space is freed once the driver has
reduced (unlinked) the results that point at it. A worker removes its last log's name when it
ends; the driver removes the names that killed workers left when the map ends.
"""
from __future__ import annotations

import os
import struct
import zlib

from poolparty_raster.claimfiles import NO_HARD_LINKS, out_of_links, process_token
from poolparty_raster.files import write_all
from poolparty_raster.names import RESULT_LOG_PREFIX

MAGIC = b"PPRL"
VERSION = 1
_LOG_HEADER = struct.Struct("<4sB16s")  # a log's: MAGIC, VERSION, its id
HEAD_SIZE = _LOG_HEADER.size
_HEADER = struct.Struct("<4sQQI")  # a record's
_PARSE_BYTES = 64 * 1024  # a parse reads the records' headers this many bytes at a time
IDLE_READS = 1 << 16  # the driver's index forgets a log not read for this many reads
LOG_BYTES = 16 * 1024 * 1024
LOG_RECORDS = 4096  # far below any filesystem's limit on links to one file (ext4: 65,000)


def is_log_name(name: str) -> bool:
    return name.startswith(RESULT_LOG_PREFIX)


def is_log(head: bytes) -> bool:
    """Whether a result file's first bytes are a result log's, not a pickle's."""
    return head[:len(MAGIC)] == MAGIC


class ResultLog:
    """A worker's side: ``publish`` a chunk's result under its final name."""

    def __init__(self, directory: str, max_bytes: int = LOG_BYTES, max_records: int = LOG_RECORDS):
        self.directory = directory
        self.max_bytes, self.max_records = max_bytes, max_records
        self.path: str | None = None
        self.records = 0
        self.size = 0  # bytes in the log: this worker alone appends to it
        self._fd = -1  # the log's, held open while it takes records
        self.hard_links = True  # False: this filesystem has none; the caller writes files

    def publish(self, destination: str, chunk: int, payload: bytes) -> bool:
        """Append the record and link ``destination`` to the log. False (nothing published)
        when the filesystem has no hard links: the caller writes a file. A result already
        under the name (a duplicate run, or an NFS link retransmitted) is kept: the first
        result wins."""
        if not self.hard_links:
            return False
        path = self._append(chunk, payload)
        try:
            os.link(path, destination)
        except FileExistsError:
            pass
        except FileNotFoundError:
            # The log's name is gone (the driver removes those of ended workers at the end
            # of a map): a new log in the work_dir, if it is still there, takes the record.
            self._retire()
            os.link(self._append(chunk, payload), destination)
        except OSError as exc:
            if out_of_links(exc, self.records - 1):  # the log takes no more links
                self._retire()
                return self.publish(destination, chunk, payload)
            if exc.errno not in NO_HARD_LINKS:
                raise
            self.hard_links = False
            self._retire()
            return False
        if self.records >= self.max_records or self.size >= self.max_bytes:
            self._retire()
        return True

    def close(self) -> None:
        """Remove the log's own name; the results linked to it stay readable."""
        self._retire()

    def _append(self, chunk: int, payload: bytes) -> str:
        record = _HEADER.pack(MAGIC, chunk, len(payload), zlib.crc32(payload)) + payload
        if self.path is None:
            self._start()
        try:
            write_all(self._fd, record)
            # Closing a descriptor is what sends its writes to an NFS server (and a FUSE
            # filesystem's flush): closing a duplicate does it for the log, held open, so
            # the record is readable elsewhere before its link exists, without an open (a
            # round trip) a record.
            os.close(os.dup(self._fd))
        except BaseException:
            self._retire()  # its end is unknown now: later records go to a new log
            raise
        self.size += len(record)
        self.records += 1
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
        self.path, self._fd, self.records, self.size = path, fd, 0, HEAD_SIZE

    def _retire(self) -> None:
        if self.path is not None:
            os.close(self._fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.path = None


LOGS_HELD = 8  # result logs the driver holds open to read from (a worker writes one at a time)


class ResultReader:
    """The driver's reads of loose results: a plain file's bytes, or the record of a result
    linked to a log (through a LogIndex). The logs read last are held open, so that a result
    linked to one of them is a stat and a pread, not an open, a stat, two preads and a close.
    ``close`` lets them go: before the driver removes a result, which may be a log's last
    name (on NFS a file open when its last name goes is kept as a .nfs file), and when it is
    done."""

    def __init__(self) -> None:
        self._index = LogIndex()
        self._held: dict[tuple[int, int], tuple[int, bytes]] = {}  # (dev, inode): fd, head

    def read(self, path: str, chunk: int, name: str) -> bytes:
        """The result of ``chunk`` at ``path``; FileNotFoundError when there is none,
        ValueError when it is damaged."""
        if self._held:
            info = os.stat(path)
            held = self._held.get((info.st_dev, info.st_ino))  # open: the same file
            if held is not None:
                return self._index.read(held[0], chunk, name, held[1], info)
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(fd, HEAD_SIZE, 0)
            if is_log(head):
                record = self._index.read(fd, chunk, name, head)
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
