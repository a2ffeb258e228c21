"""File primitives of the work_dir protocol: writes that appear whole or not at all, JSON
lines appended one write each, files written front to back through a buffer. The zip archives
are storedzip.py's."""
from __future__ import annotations

import json
import os
import tempfile
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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written: a write to a regular file that stops short
    (the disk filled) raises on the next one."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


class ForwardWriter:
    """A binary file written front to back through a buffer of ``buffer_bytes`` (tasks.zip's
    a chunk at a time: a write each would cost more than a small chunk's pickling). It cannot
    seek: zipfile given one streams each entry once, its sizes after the data (a data
    descriptor), instead of seeking back to write its header again."""

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


def copy_stream(src: IO[bytes], dst: IO[bytes], size: int = 1 << 20) -> None:
    while block := src.read(size):
        dst.write(block)
