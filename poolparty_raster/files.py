"""File primitives of the work_dir protocol: writes that appear whole or not at all, JSON
lines appended one write each, and zip archives extended under a temporary name."""
from __future__ import annotations

import array
import json
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
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
    taken for dead renamed as it lived on), else its absence raises.

    Appending copies the old entries and their central directory as bytes and writes each
    new entry's records itself, as zipfile writes them (the same bytes): zipfile would hold
    an object of ~450 bytes for every entry, old and new, 450 MB for a map of a million
    chunks. Only an archive that something else wrote (prepended data, a comment, several
    disks) or a replaced entry goes through zipfile."""
    replaced: bool | None = None  # None: zipfile's turn
    if all(entry.isascii() for entry in entries):
        try:
            with open(path, "rb") as old:
                directory = _central_directory(old)
                if directory is not None:
                    replaced = _names_clash(old, directory, entries)
        except FileNotFoundError:
            directory, replaced = (0, 0, 0), False
    if replaced is False:
        atomic_write(path, lambda f: _append_entries(f, path, directory, entries, open_source,
                                                     may_vanish))
    else:
        _extend_with_zipfile(path, entries, open_source, may_vanish)


def _extend_with_zipfile(path: str, entries: dict[str, str],
                         open_source: Callable[[str], IO[bytes]], may_vanish: bool) -> None:
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


# The zip records that extend_archive reads and writes (APPNOTE 4.3.7, 4.3.12, 4.3.14-16),
# packed as zipfile packs them for an entry opened by name with force_zip64 on a seekable file.
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
                    entries: dict[str, str], open_source: Callable[[str], IO[bytes]],
                    may_vanish: bool) -> None:
    cd_offset, cd_size, count = directory
    central = bytearray()  # the new entries' central directory records
    old = open(path, "rb") if count or cd_offset else None
    try:
        if old is not None:
            _copy_range(old, f, 0, cd_offset)
        for entry, name in entries.items():
            try:
                src = open_source(name)
            except FileNotFoundError:
                if not may_vanish:
                    raise
                continue
            with src:
                central += _write_entry(f, entry.encode("ascii"), src)
            count += 1
        start = f.tell()
        if old is not None:
            _copy_range(old, f, cd_offset, cd_size)
    finally:
        if old is not None:
            old.close()
    f.write(central)
    _write_end(f, count, start, f.tell())


def _write_end(f: IO[bytes], count: int, start: int, end: int) -> None:
    """The end records of an archive of ``count`` entries whose central directory lies from
    ``start`` to ``end``, as zipfile writes them."""
    size = end - start
    if count > _COUNT_LIMIT or start > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
        f.write(_END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
        f.write(_END64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    f.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))


def _write_entry(f: IO[bytes], name: bytes, src: IO[bytes]) -> bytes:
    """Write one STORED entry (its local header, zip64, then its bytes) at ``f``'s position;
    returns its central directory record."""
    offset = f.tell()
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
    return _central_record(name, crc, size, offset)


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


class StoredArchive:
    """An archive opened for reading entries one by one, as ``ZipFile.read`` would, in a
    fraction of the memory: where a ZipFile holds ~450 bytes an entry, the place, size and
    CRC-32 of each entry named ``prefix`` + a chunk key + ``suffix`` are held in arrays
    indexed by the chunk (24 bytes a chunk), other entries in a dict. An entry is read with
    one pread and checked against its CRC-32. Compressed entries, and archives that zipfile
    alone reads (a comment, prepended data, encryption), go through zipfile."""

    def __init__(self, path: str, prefix: str = "", suffix: str = ""):
        self.path = path
        self._prefix, self._suffix = prefix, suffix
        self._file = open(path, "rb")
        self._zip: zipfile.ZipFile | None = None
        self._offsets = array.array("q")  # by chunk; -1: no such entry
        self._sizes = array.array("q")    # -1: compressed, read through zipfile
        self._crcs = array.array("q")
        self._others: dict[str, tuple[int, int, int]] = {}
        try:
            self._indexed = self._index()
        except BaseException:
            self._file.close()
            raise

    def _index(self) -> bool:
        directory = _central_directory(self._file)
        if directory is None:
            return False
        prefix, suffix = self._prefix.encode(), self._suffix.encode()
        try:
            for name, flags, compression, crc, size, offset in _central_entries(self._file, directory):
                if flags & 0x01:  # encrypted
                    return False
                if compression != zipfile.ZIP_STORED:
                    size = -1
                key = name[len(prefix):len(name) - len(suffix)]
                if (name.startswith(prefix) and name.endswith(suffix) and key.isdigit()
                        and (len(key) == 6 or (len(key) > 6 and key[:1] != b"0"))
                        and int(key) <= 4 * directory[2] + (1 << 16)):
                    self._place(int(key), offset, size, crc)
                else:
                    text = name.decode("utf-8" if flags & 0x800 else "cp437")
                    self._others[text] = (offset, size, crc)
        except (ValueError, struct.error, UnicodeDecodeError):
            return False
        return True

    def _place(self, chunk: int, offset: int, size: int, crc: int) -> None:
        if chunk == len(self._offsets):  # chunks come mostly in order
            self._offsets.append(offset)
            self._sizes.append(size)
            self._crcs.append(crc)
            return
        if chunk > len(self._offsets):
            grow = chunk + 1 - len(self._offsets)
            self._offsets.extend(array.array("q", [-1]) * grow)
            self._sizes.extend(array.array("q", [0]) * grow)
            self._crcs.extend(array.array("q", [0]) * grow)
        self._offsets[chunk], self._sizes[chunk], self._crcs[chunk] = offset, size, crc

    def _find(self, name: str) -> tuple[int, int, int] | None:
        if name in self._others:
            return self._others[name]
        key = name[len(self._prefix):len(name) - len(self._suffix)]
        if not (name.startswith(self._prefix) and name.endswith(self._suffix)
                and key.isascii() and key.isdigit()):
            return None
        chunk = int(key)
        if chunk >= len(self._offsets) or self._offsets[chunk] < 0 or key != f"{chunk:06d}":
            return None
        return self._offsets[chunk], self._sizes[chunk], self._crcs[chunk]

    def read(self, name: str) -> bytes:
        """The entry's bytes; KeyError when there is none, BadZipFile where it is damaged."""
        if not self._indexed:
            return self._zipfile().read(name)
        found = self._find(name)
        if found is None:
            raise KeyError(f"There is no item named {name!r} in the archive")
        offset, size, crc = found
        if size < 0:
            return self._zipfile().read(name)
        fd = self._file.fileno()
        head = os.pread(fd, _LOCAL_ENTRY.size + 512 + size, offset)
        try:
            signature, *_, name_length, extra_length = _LOCAL_ENTRY.unpack_from(head)
        except struct.error:
            raise zipfile.BadZipFile(f"{self.path}: entry {name} is damaged") from None
        start = _LOCAL_ENTRY.size + name_length + extra_length
        if (signature != b"PK\x03\x04"
                or head[_LOCAL_ENTRY.size:_LOCAL_ENTRY.size + name_length] != name.encode()):
            raise zipfile.BadZipFile(f"{self.path}: entry {name} is damaged")
        data = head[start:start + size]
        if len(data) < size:
            data += os.pread(fd, size - len(data), offset + start + len(data))
        if len(data) != size or zlib.crc32(data) != crc:
            raise zipfile.BadZipFile(f"{self.path}: entry {name} is damaged")
        return data

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self._file)
        return self._zip

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._file.close()


class StoredZipWriter:
    """Writes a STORED zip archive front to back on ``f``, which needs only ``write`` and
    ``tell`` (a ForwardWriter): each entry's header carries its size and CRC-32, so no data
    descriptor follows it. zipfile holds a ~450-byte object an entry until it closes (450 MB
    for a map of a million chunks); here the central directory waits as bytes, spooled to a
    temporary file past 8 MB."""

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


def _copy_range(src: IO[bytes], dst: IO[bytes], offset: int, length: int) -> None:
    src.seek(offset)
    while length > 0:
        block = src.read(min(_BLOCK, length))
        if not block:
            raise ValueError(f"{getattr(src, 'name', 'the archive')} ended early")
        dst.write(block)
        length -= len(block)


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
