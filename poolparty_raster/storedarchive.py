"""Reading the work_dir's archives entry by entry without an object per entry: the index of
an archive's entries (arrays by chunk) and the reader on it. The format, and writing, are in
storedzip.py."""
from __future__ import annotations

import array
import os
import struct
import zipfile
import zlib
from typing import IO

from poolparty_raster.storedzip import (_LOCAL_ENTRY, Version, _central_directory,
                                        _central_entries, file_version)


class ArchiveIndex:
    """Where the entries of one version of an archive are: the place, size and CRC-32 of each
    entry named ``prefix`` + a chunk key + ``suffix`` in arrays indexed by the chunk (20 bytes
    a chunk), other entries in a dict. ``version`` says which file it describes (None: none);
    ``readable`` is False for an archive that zipfile alone reads (a comment, prepended data,
    encryption). extend_archive adds what it appends, so that the driver parses an archive's
    central directory once, not at every reduce and every read after one."""

    def __init__(self, prefix: str = "", suffix: str = ""):
        self.prefix, self.suffix = prefix, suffix
        self._prefix, self._suffix = prefix.encode(), suffix.encode()
        self.version: Version | None = None
        self.readable = True
        self.clear()

    def clear(self) -> None:
        self.version, self.readable, self._count = None, True, 0
        self._offsets = array.array("q")  # by chunk; -1: no such entry
        self._sizes = array.array("q")    # -1: compressed, read through zipfile
        self._crcs = array.array("I")
        self._others: dict[str, tuple[int, int, int]] = {}

    def load(self, f: IO[bytes]) -> None:
        """Index the archive open as ``f`` (its central directory)."""
        self.clear()
        self.version = file_version(os.fstat(f.fileno()))
        directory = _central_directory(f)
        try:
            if directory is not None:
                for name, flags, compression, crc, size, offset in _central_entries(f, directory):
                    if flags & 0x01:  # encrypted
                        break
                    self.add(name, offset, -1 if compression != zipfile.ZIP_STORED else size, crc,
                             flags)
                else:
                    return
        except (ValueError, struct.error, UnicodeDecodeError):
            pass
        version = self.version
        self.clear()
        self.version, self.readable = version, False

    def add(self, name: bytes, offset: int, size: int, crc: int, flags: int = 0) -> None:
        """An entry, as its central directory record has it (``size`` -1: compressed)."""
        self._count += 1
        prefix, suffix = self._prefix, self._suffix
        key = name
        if prefix or suffix:
            key = (name[len(prefix):len(name) - len(suffix)]
                   if name.startswith(prefix) and name.endswith(suffix) else b"")
        if (key.isdigit() and (len(key) == 6 or (len(key) > 6 and key[:1] != b"0"))
                and int(key) <= 4 * self._count + (1 << 16)):
            self._place(int(key), offset, size, crc)
        else:
            self._others[name.decode("utf-8" if flags & 0x800 else "cp437")] = (offset, size, crc)

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
            self._crcs.extend(array.array("I", [0]) * grow)
        self._offsets[chunk], self._sizes[chunk], self._crcs[chunk] = offset, size, crc

    def find(self, name: str) -> tuple[int, int, int] | None:
        """(offset, size, CRC-32) of the entry ``name``; None when there is none."""
        found = self._others.get(name)
        if found is not None:
            return found
        key = name
        if self.prefix or self.suffix:
            prefix, suffix = self.prefix, self.suffix
            if not (name.startswith(prefix) and name.endswith(suffix)):
                return None
            key = name[len(prefix):len(name) - len(suffix)]
        # A chunk key: six digits, or more without a leading zero (f"{chunk:06d}").
        if not (key.isascii() and key.isdigit()
                and (len(key) == 6 or (len(key) > 6 and key[0] != "0"))):
            return None
        chunk = int(key)
        if chunk >= len(self._offsets) or self._offsets[chunk] < 0:
            return None
        return self._offsets[chunk], self._sizes[chunk], self._crcs[chunk]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None


class StoredArchive:
    """An archive opened for reading entries one by one, as ``ZipFile.read`` would, through an
    :class:`ArchiveIndex` (its own, or ``index`` where that describes this version of the
    file: the driver's, kept up to date by extend_archive). An entry is read with one pread
    and checked against its CRC-32. Compressed entries, and archives that zipfile alone reads,
    go through zipfile."""

    def __init__(self, path: str, prefix: str = "", suffix: str = "",
                 index: ArchiveIndex | None = None):
        self.path = path
        self._file = open(path, "rb")
        self._zip: zipfile.ZipFile | None = None
        self._memory: bytes | None = None  # keep_in_memory's
        try:
            self._version = file_version(os.fstat(self._file.fileno()))
            self._index = index if index is not None else ArchiveIndex(prefix, suffix)
            if self._index.version != self._version:
                self._index.load(self._file)
        except BaseException:
            self._file.close()
            raise

    def read(self, name: str) -> bytes:
        """The entry's bytes; KeyError when there is none, BadZipFile where it is damaged."""
        if self._index.version != self._version:  # a shared index moved on to a later version
            self._index = ArchiveIndex(self._index.prefix, self._index.suffix)
            self._index.load(self._file)
        if not self._index.readable:
            return self._zipfile().read(name)
        found = self._index.find(name)
        if found is None:
            raise KeyError(f"There is no item named {name!r} in the archive")
        offset, size, crc = found
        if size < 0:
            return self._zipfile().read(name)
        head = self._pread(_LOCAL_ENTRY.size + 512 + size, offset)
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
            data += self._pread(size - len(data), offset + start + len(data))
        if len(data) != size or zlib.crc32(data) != crc:
            raise zipfile.BadZipFile(f"{self.path}: entry {name} is damaged")
        return data

    def keep_in_memory(self) -> None:
        """Read the whole file into memory, its descriptor closed, and entries from there: a
        process forked later reads them with no call to the filesystem, and closes no
        descriptor of it when it exits (on FUSE and NFS every close is a round trip to the
        server; a mapping would keep a descriptor). An archive that zipfile alone reads is
        refused (ValueError): those go through a descriptor."""
        if not self._index.readable:
            raise ValueError(f"{self.path} is read through zipfile")
        self._file.seek(0)
        self._memory = self._file.read()
        self._file.close()

    def _pread(self, size: int, offset: int) -> bytes:
        if self._memory is not None:
            return self._memory[offset:offset + size]
        return os.pread(self._file.fileno(), size, offset)

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self._file)
        return self._zip

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._memory = None
        self._file.close()


# A zip entry's local header (APPNOTE 4.3.7): signature, 22 bytes of fields the central
# directory repeats, the lengths of the name and of the extra field that precede the data.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"


def read_stored(archive: zipfile.ZipFile, name: str) -> bytes:
    """An entry of a ZipFile read at the offset its central directory entry gives, two
    preads, checked against its CRC-32 (``ZipFile.read`` costs ~30 us an entry in Python); a
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
