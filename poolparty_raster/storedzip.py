"""The work_dir's zip archives (tasks.zip, tasks.results.zip, ...) read and written without an
object per entry.

Why not zipfile alone: a ``ZipFile`` holds a ``ZipInfo`` of ~450 bytes for every entry, from
opening to closing, whether it reads or writes: 450 MB for a map of a million chunks, in the
driver and in every worker that reads tasks.zip. Here an archive's entries are held as arrays
indexed by chunk (20 bytes an entry), and written records as bytes.

The subset of the zip format (APPNOTE 6.3) read and written here: STORED entries (never
compressed, never encrypted), each with a zip64 extra field in its local header (sizes) and,
past zipfile's limits, in its central directory record (sizes, offset); one disk; no archive
comment, no data before the first entry; zip64 end records once zipfile would write them.
What is written is byte for byte what zipfile writes for the same entries opened with
``force_zip64`` on a seekable file (tests/test_archive.py compares the two). An archive outside
the subset (written by something else, a comment, compressed entries, data descriptors) is
read entry by entry where it can be, and otherwise left to zipfile, as is an extension that
replaces an entry.

This module has the records, the reading of an archive's central directory and the writing;
storedarchive.py reads entries through an index of them.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Container, Iterator
from typing import IO, TYPE_CHECKING, Any

from poolparty_raster.files import atomic_write, copy_stream

if TYPE_CHECKING:
    from poolparty_raster.storedarchive import ArchiveIndex

# The zip records read and written here (APPNOTE 4.3.7, 4.3.12, 4.3.14-16), packed as zipfile
# packs them for an entry opened by name with force_zip64 on a seekable file.
_LOCAL_ENTRY = struct.Struct("<4s2B4HL2L2H")
_CENTRAL_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_ZIP64_SIZES = struct.Struct("<HHQQ")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LIMIT = (1 << 31) - 1  # zipfile's: a size or offset beyond it goes into a zip64 field
_COUNT_LIMIT = (1 << 16) - 1
_ZIP64_VERSION = 45
_DOS_DATE = 33  # 1980-01-01, the date zipfile gives an entry opened by name (time 0:00)
_CREATE_SYSTEM = 0 if sys.platform == "win32" else 3
_EXTERNAL_ATTR = 0o600 << 16
_SMALL_ENTRY = 1 << 20  # an entry up to this size is read whole, its header written once
_BLOCK = 1 << 20

Version = tuple[int, int, int]  # a file's inode, mtime (ns) and size: which archive it is


def file_version(info: os.stat_result) -> Version:
    return info.st_ino, info.st_mtime_ns, info.st_size


# -- reading -----------------------------------------------------------------------------
def _central_directory(f: IO[bytes]) -> tuple[int, int, int] | None:
    """(offset, size, entries) of the central directory of the zip archive ``f``, found as
    zipfile finds it; None for an archive with a comment, prepended data or several disks,
    or one that is not an archive (zipfile deals with those)."""
    size = f.seek(0, os.SEEK_END)
    if size < _END.size:
        return None
    end_at = size - _END.size
    f.seek(end_at)
    signature, disk, cd_disk, disk_entries, entries, cd_size, cd_offset, comment = \
        _END.unpack(f.read(_END.size))
    if signature != b"PK\x05\x06" or comment or disk or cd_disk or disk_entries != entries:
        return None
    if end_at >= _END64_LOCATOR.size + _END64.size:
        f.seek(end_at - _END64_LOCATOR.size)
        signature, disk, end64_at, disks = _END64_LOCATOR.unpack(f.read(_END64_LOCATOR.size))
        if signature == b"PK\x06\x07":
            if disk or disks != 1 or end64_at != end_at - _END64_LOCATOR.size - _END64.size:
                return None
            f.seek(end64_at)
            (signature, _, _, _, disk, cd_disk, disk_entries, entries, cd_size,
             cd_offset) = _END64.unpack(f.read(_END64.size))
            if signature != b"PK\x06\x06" or disk or cd_disk or disk_entries != entries:
                return None
            end_at = end64_at
    if cd_offset + cd_size != end_at:
        return None
    return cd_offset, cd_size, entries


def _central_entries(f: IO[bytes], directory: tuple[int, int, int]
                     ) -> Iterator[tuple[bytes, int, int, int, int, int]]:
    """(name, flags, compression, CRC-32, size, local header offset) of each entry of the
    central directory, read a block at a time; ValueError where it is damaged."""
    offset, size, entries = directory
    f.seek(offset)
    left, buffer, at = size, b"", 0
    for _ in range(entries):
        while True:
            if len(buffer) - at >= _CENTRAL_ENTRY.size:
                fields = _CENTRAL_ENTRY.unpack_from(buffer, at)
                record = _CENTRAL_ENTRY.size + fields[12] + fields[13] + fields[14]
                if len(buffer) - at >= record:
                    break
            block = f.read(min(_BLOCK, left)) if left else b""
            if not block:
                raise ValueError("the central directory ends inside an entry")
            left -= len(block)
            buffer, at = buffer[at:] + block, 0
        if fields[0] != b"PK\x01\x02":
            raise ValueError("not a central directory entry")
        name_end = at + _CENTRAL_ENTRY.size + fields[12]
        compressed, file_size, header_offset = fields[10], fields[11], fields[18]
        if 0xFFFFFFFF in (compressed, file_size, header_offset):  # in the zip64 field
            file_size, compressed, header_offset = _zip64_fields(
                buffer[name_end:name_end + fields[13]], file_size, compressed, header_offset)
        yield (buffer[at + _CENTRAL_ENTRY.size:name_end], fields[5], fields[6], fields[9],
               compressed, header_offset)
        at += record


def _zip64_fields(extra: bytes, *values: int) -> tuple[int, ...]:
    """(size, compressed size, header offset) with those at 0xFFFFFFFF read from the zip64
    field, in that order, as APPNOTE 4.5.3 has them."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 1:
            out, field = [], at + 4
            for value in values:
                if value == 0xFFFFFFFF:
                    if field + 8 > at + 4 + length:
                        raise ValueError("a zip64 field is short")
                    value = struct.unpack_from("<Q", extra, field)[0]
                    field += 8
                out.append(value)
            return tuple(out)
        at += 4 + length
    raise ValueError("a zip64 field is missing")


def numbered_entries(path: str) -> set[int]:
    """The numbers of an archive's entries named by digits alone (chunk keys), read from its
    central directory without an object per entry where the archive allows."""
    with open(path, "rb") as f:
        directory = _central_directory(f)
        if directory is not None:
            try:
                return {int(name) for name, *_ in _central_entries(f, directory) if name.isdigit()}
            except (ValueError, struct.error):
                pass
    with zipfile.ZipFile(path) as z:
        return {int(n) for n in z.namelist() if n.isdigit()}


def extend_archive(path: str, entries: dict[str, str],
                   open_source: Callable[[str], IO[bytes] | bytes], may_vanish: bool,
                   index: ArchiveIndex | None = None) -> None:
    """The STORED archive ``path`` with ``entries`` ({entry: source name, opened with
    ``open_source``, which may give the bytes themselves}) added, renamed into place: a copy of the old archive's bytes with the
    new entries appended (re-encoding each old entry cost more than all else a reduce does),
    or, where an entry replaces one (a chunk run again), the old entries but those rewritten
    one by one. ``may_vanish``: a source that is gone is skipped (a capture that an attempt
    taken for dead renamed as it lived on), else its absence raises. ``index``: the caller's
    index of the archive, consulted for replaced entries where it describes the archive as it
    is (else loaded), and given the appended entries.

    Only an archive that something else wrote (prepended data, a comment, several disks) or a
    replaced entry goes through zipfile."""
    replaced: bool | None = None  # None: zipfile's turn
    if all(entry.isascii() for entry in entries):
        try:
            with open(path, "rb") as old:
                directory = _central_directory(old)
                if directory is not None and index is not None:
                    if index.version != file_version(os.fstat(old.fileno())):
                        index.load(old)
                    replaced = any(entry in index for entry in entries) if index.readable else None
                elif directory is not None:
                    replaced = _names_clash(old, directory, entries)
        except FileNotFoundError:
            directory, replaced = (0, 0, 0), False
            if index is not None:
                index.clear()
    if replaced is False:
        try:
            atomic_write(path, lambda f: _append_entries(f, path, directory, entries,
                                                         open_source, may_vanish, index))
        except BaseException:
            if index is not None:  # it may hold entries that are not there: parsed afresh
                index.clear()
            raise
        if index is not None:
            index.version = file_version(os.stat(path))
    else:
        if index is not None:
            index.clear()
        _extend_with_zipfile(path, entries, open_source, may_vanish)


def _names_clash(f: IO[bytes], directory: tuple[int, int, int],
                 names: Container[str]) -> bool | None:
    """Whether the archive holds an entry of one of ``names`` (ASCII all); None where its
    directory is damaged: zipfile's turn."""
    try:
        for name, *_ in _central_entries(f, directory):
            if name.isascii() and name.decode("ascii") in names:
                return True
        return False
    except (ValueError, struct.error):
        return None


def _append_entries(f: IO[bytes], path: str, directory: tuple[int, int, int],
                    entries: dict[str, str], open_source: Callable[[str], IO[bytes] | bytes],
                    may_vanish: bool, index: ArchiveIndex | None) -> None:
    """Write the old archive's entries, the new ones (each also added to ``index``), the old
    central directory, the new entries' records, the end records.
    Where ``f`` is, is counted here: asking a buffered file cost more than a small entry."""
    cd_offset, cd_size, count = directory
    central = bytearray()  # the new entries' central directory records
    old = open(path, "rb") if count or cd_offset else None
    try:
        if old is not None:
            _copy_range(old, f, 0, cd_offset)
        at = cd_offset
        for entry, src in _opened(entries, open_source, may_vanish):
            encoded = entry.encode("ascii")
            if isinstance(src, bytes):
                crc, size = zlib.crc32(src), len(src)
                f.write(_local_header(encoded, crc, size) + src)
            else:
                with src:
                    crc, size = _write_entry(f, encoded, src, at)
            central += _central_record(encoded, crc, size, at)
            if index is not None:
                index.add(encoded, at, size, crc)
            at += _LOCAL_ENTRY.size + len(encoded) + _ZIP64_SIZES.size + size
            count += 1
        if old is not None:
            _copy_range(old, f, cd_offset, cd_size)
    finally:
        if old is not None:
            old.close()
    f.write(central)
    _write_end(f, count, at, at + cd_size + len(central))


def _write_end(f: IO[bytes], count: int, start: int, end: int) -> None:
    """The end records of an archive of ``count`` entries whose central directory lies from
    ``start`` to ``end``, as zipfile writes them."""
    size = end - start
    if count > _COUNT_LIMIT or start > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
        f.write(_END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
        f.write(_END64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    f.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))


def _write_entry(f: IO[bytes], name: bytes, src: IO[bytes], offset: int) -> tuple[int, int]:
    """Write one STORED entry (its local header, zip64, then its bytes) at ``offset``, where
    ``f`` is; returns its CRC-32 and size."""
    data = src.read(_SMALL_ENTRY + 1)
    crc, size = zlib.crc32(data), len(data)
    if size <= _SMALL_ENTRY:
        f.write(_local_header(name, crc, size) + data)
    else:  # a long capture: the header is written again once its size is known
        f.write(_local_header(name, 0, 0))
        f.write(data)
        while block := src.read(_BLOCK):
            crc, size = zlib.crc32(block, crc), size + len(block)
            f.write(block)
        end = f.tell()
        f.seek(offset)
        f.write(_local_header(name, crc, size))
        f.seek(end)
    return crc, size


def _central_record(name: bytes, crc: int, size: int, offset: int) -> bytes:
    """An entry's central directory record (STORED: its size is its compressed size)."""
    zip64 = []
    sizes = size
    if size > _ZIP64_LIMIT:
        zip64 += [size, size]
        sizes = 0xFFFFFFFF
    header_offset = offset
    if offset > _ZIP64_LIMIT:
        zip64.append(offset)
        header_offset = 0xFFFFFFFF
    extra = struct.pack("<HH" + "Q" * len(zip64), 1, 8 * len(zip64), *zip64) if zip64 else b""
    return _CENTRAL_ENTRY.pack(b"PK\x01\x02", _ZIP64_VERSION, _CREATE_SYSTEM, _ZIP64_VERSION, 0,
                               0, 0, 0, _DOS_DATE, crc, sizes, sizes, len(name), len(extra), 0,
                               0, 0, _EXTERNAL_ATTR, header_offset) + name + extra


def _local_header(name: bytes, crc: int, size: int) -> bytes:
    return _LOCAL_ENTRY.pack(b"PK\x03\x04", _ZIP64_VERSION, 0, 0, 0, 0, _DOS_DATE, crc,
                             0xFFFFFFFF, 0xFFFFFFFF, len(name), _ZIP64_SIZES.size) + name + \
        _ZIP64_SIZES.pack(1, 16, size, size)


def _copy_range(src: IO[bytes], dst: IO[bytes], offset: int, length: int) -> None:
    src.seek(offset)
    while length > 0:
        block = src.read(min(_BLOCK, length))
        if not block:
            raise ValueError(f"{getattr(src, 'name', 'the archive')} ended early")
        dst.write(block)
        length -= len(block)


class StoredZipWriter:
    """Writes a STORED zip archive front to back on ``f``, which needs only ``write`` and
    ``tell`` (a files.ForwardWriter): each entry's header carries its size and CRC-32, so no
    data descriptor follows it. The central directory waits as bytes, spooled to a temporary
    file past 8 MB."""

    def __init__(self, f: IO[bytes]):
        self._file = f
        self._central = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        self._count = 0

    def writestr(self, name: str, data: bytes) -> None:
        encoded = name.encode("ascii")  # entries are named by this package: ASCII
        offset = self._file.tell()
        crc, size = zlib.crc32(data), len(data)
        self._file.write(_local_header(encoded, crc, size))
        self._file.write(data)
        self._central.write(_central_record(encoded, crc, size, offset))
        self._count += 1

    def close(self) -> None:
        start = self._file.tell()
        self._central.seek(0)
        while block := self._central.read(_BLOCK):
            self._file.write(block)
        self._central.close()
        _write_end(self._file, self._count, start, self._file.tell())

    def discard(self) -> None:
        self._central.close()


def _extend_with_zipfile(path: str, entries: dict[str, str],
                         open_source: Callable[[str], IO[bytes] | bytes], may_vanish: bool) -> None:
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
                                copy_stream(src, dst)
            for entry, src in _opened(entries, open_source, may_vanish):
                if isinstance(src, bytes):
                    src = io.BytesIO(src)
                with src, out.open(entry, "w", force_zip64=True) as dst:
                    copy_stream(src, dst)

    atomic_write(path, write)


def _opened(entries: dict[str, str], open_source: Callable[[str], Any],
            may_vanish: bool) -> Iterator[tuple[str, Any]]:
    """(entry, its source opened) for each entry; a source that is gone is skipped where
    ``may_vanish``, else its absence raises."""
    for entry, name in entries.items():
        try:
            src = open_source(name)
        except FileNotFoundError:
            if not may_vanish:
                raise
            continue
        yield entry, src
