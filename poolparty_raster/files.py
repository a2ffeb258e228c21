"""File primitives of the work_dir protocol: writes that appear whole or not at all, JSON
lines appended one write each, and zip archives extended under a temporary name."""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Any


def atomic_write(path: str, write: Callable[[IO[bytes]], Any] | bytes, durable: bool = True) -> None:
    """Write ``path`` through a 0600 temporary file in the same directory, then rename it.

    On any error (a full disk included) the temporary file is removed and nothing appears
    under ``path``; an existing file there stays as it was. ``durable``: the data reaches the
    disk before the rename, so that a machine that crashes does not leave a torn file under
    the name either.
    """
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "w+b") as f:  # readable too: a zip appended to reads its directory
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def extend_archive(path: str, entries: dict[str, str], open_source: Callable[[str], IO[bytes]],
                   may_vanish: bool) -> None:
    """The STORED archive ``path`` with ``entries`` ({entry: source name, opened with
    ``open_source``}) added, renamed into place: a copy of the old archive's bytes with the
    new entries appended (re-encoding each old entry cost more than all else a reduce does),
    or, where an entry replaces one (a chunk run again), the old entries but those rewritten
    one by one. ``may_vanish``: a source that is gone is skipped (a capture that an attempt
    taken for dead renamed as it lived on), else its absence raises."""
    try:
        with zipfile.ZipFile(path) as old:
            replaced = not entries.keys().isdisjoint(old.namelist())
    except FileNotFoundError:
        replaced = None

    def write(f: IO[bytes]) -> None:
        mode = "w"
        if replaced is False:
            with open(path, "rb") as old_bytes:
                shutil.copyfileobj(old_bytes, f)
            mode = "a"
        with zipfile.ZipFile(f, mode, compression=zipfile.ZIP_STORED, allowZip64=True) as out:
            if replaced:
                with zipfile.ZipFile(path) as old:
                    for info in old.infolist():
                        if info.filename not in entries:
                            with old.open(info) as src, out.open(info, "w") as dst:
                                _copy(src, dst)
            for entry, name in entries.items():
                try:
                    src = open_source(name)
                except FileNotFoundError:
                    if not may_vanish:
                        raise
                    continue
                with src, out.open(entry, "w", force_zip64=True) as dst:
                    _copy(src, dst)

    atomic_write(path, write)


def append_line(path: str, record: dict[str, Any]) -> None:
    """One JSON line, appended whole: only the driver writes these files. A write that fails
    part-way (a full disk) is cut off again, so that the next line does not join a torn one
    and both become unreadable; a line torn by a crash is skipped by the reader."""
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_jsonl(path: str) -> Iterable[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return


# A zip entry's local header (APPNOTE 4.3.7): signature, 22 bytes of fields the central
# directory repeats, the lengths of the name and of the extra field that precede the data.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"


def read_stored(archive: zipfile.ZipFile, name: str) -> bytes:
    """An entry's bytes read at the offset its central directory entry gives, two preads,
    checked against its CRC-32: ``ZipFile.read`` costs ~30 us an entry in Python (a shared
    file object, the local header read field by field), more than a small chunk's work. A
    compressed entry goes through ``ZipFile.read``."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return archive.read(name)
    fd = archive.fp.fileno()
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(
        os.pread(fd, _LOCAL_HEADER.size, info.header_offset))
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    data = os.pread(fd, info.compress_size, start)
    if signature != _LOCAL_SIGNATURE or zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile(f"{archive.filename}: entry {name} is damaged")
    return data


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written: a write to a regular file that stops short
    (the disk filled) raises on the next one."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class ForwardWriter:
    """A binary file written front to back through a buffer of ``buffer_bytes``, for zipfile:
    it cannot seek, so zipfile streams each entry once with its sizes after the data (a data
    descriptor) instead of writing its header, then seeking back to write it again; on a
    seekable file that costs three system calls an entry, half a small entry's cost."""

    def __init__(self, f: IO[bytes], buffer_bytes: int = 1 << 20):
        self._file = f
        self._buffer = bytearray()
        self._limit = buffer_bytes
        self._position = f.tell()

    def write(self, data: bytes) -> int:
        self._buffer += data
        self._position += len(data)
        if len(self._buffer) >= self._limit:
            self.flush()
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._file.write(self._buffer)
        self._buffer.clear()
        self._file.flush()


def _copy(src: IO[bytes], dst: IO[bytes], size: int = 1 << 20) -> None:
    while block := src.read(size):
        dst.write(block)
