"""The archives' own writer and reader (storedzip.py, storedarchive.py): the bytes zipfile
would write, without an object per entry."""
from __future__ import annotations

import os
import zipfile

import pytest

from poolparty_raster import files, storedarchive, storedzip
from poolparty_raster.storedarchive import StoredArchive
from poolparty_raster.storedzip import extend_archive, numbered_entries


def _sources(tmp_path, contents):
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return lambda name: open(tmp_path / name, "rb")


def _both(tmp_path, batches, may_vanish=False):
    """The archive after each batch, written by extend_archive and by zipfile."""
    ours, theirs = str(tmp_path / "ours.zip"), str(tmp_path / "theirs.zip")
    for batch, contents in batches:
        source = _sources(tmp_path, contents)
        extend_archive(ours, batch, source, may_vanish)
        storedzip._extend_with_zipfile(theirs, batch, source, may_vanish)
    return ours, theirs


def test_appended_entries_are_the_bytes_zipfile_writes(tmp_path):
    big = os.urandom(storedzip._SMALL_ENTRY + 12345)  # streamed, its header written twice
    ours, theirs = _both(tmp_path, [
        ({"000000": "a", "000002": "b"}, {"a": b"first", "b": b""}),
        ({"000001": "c", "000003.attempt-1.stderr": "d"}, {"c": b"late", "d": big}),
        ({"000004": "e"}, {"e": b"x" * 1000}),
    ])
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    with zipfile.ZipFile(ours) as z:
        assert z.testzip() is None
        assert z.read("000003.attempt-1.stderr") == big
    assert numbered_entries(ours) == {0, 1, 2, 4}


def test_an_archive_past_zip64_limits_gets_zipfile_end_records(tmp_path, monkeypatch):
    # zipfile's limits, lowered: 70,000 entries would take long, 2 GiB offsets longer.
    monkeypatch.setattr(storedzip, "_COUNT_LIMIT", 3)
    monkeypatch.setattr(storedzip, "_ZIP64_LIMIT", 100)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 3)
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    contents = {f"s{i}": bytes([i]) * (30 * i) for i in range(8)}
    ours, theirs = _both(tmp_path, [({f"{i:06d}": f"s{i}" for i in range(5)}, contents),
                                    ({f"{i:06d}": f"s{i}" for i in range(5, 8)}, contents)])
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    monkeypatch.undo()
    with zipfile.ZipFile(ours) as z:
        assert z.testzip() is None and len(z.namelist()) == 8
    archive = StoredArchive(ours)
    try:
        assert [archive.read(f"{i:06d}") for i in range(8)] == [contents[f"s{i}"] for i in range(8)]
    finally:
        archive.close()


def test_a_replaced_entry_and_a_foreign_archive_go_through_zipfile(tmp_path):
    path = str(tmp_path / "a.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("000000", b"old" * 100)
        z.writestr("000001", b"kept")
        z.comment = b"written elsewhere"
    extend_archive(path, {"000002": "n"}, _sources(tmp_path, {"n": b"new"}), False)
    extend_archive(path, {"000000": "r"}, _sources(tmp_path, {"r": b"again"}), False)
    with zipfile.ZipFile(path) as z:
        assert {n: z.read(n) for n in z.namelist()} == {
            "000000": b"again", "000001": b"kept", "000002": b"new"}
    archive = StoredArchive(path)
    try:
        assert archive.read("000001") == b"kept"
        with pytest.raises(KeyError):
            archive.read("000003")
    finally:
        archive.close()


def test_a_vanished_capture_is_skipped_and_a_vanished_result_raises(tmp_path):
    path = str(tmp_path / "a.zip")
    source = _sources(tmp_path, {"a": b"here"})
    extend_archive(path, {"000000": "a", "000001": "gone"}, source, may_vanish=True)
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["000000"]
    with pytest.raises(FileNotFoundError):
        extend_archive(path, {"000002": "gone"}, source, may_vanish=False)
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["000000"]  # unchanged: nothing was renamed into place


def test_a_stored_archive_reads_entries_checked_against_their_checksum(tmp_path):
    path = str(tmp_path / "a.zip")
    extend_archive(path, {f"{i:06d}": "a" for i in (0, 7, 1234567)} | {"000009.orphan.stderr": "a"},
                   _sources(tmp_path, {"a": b"payload"}), False)
    archive = StoredArchive(path)
    try:
        assert archive.read("1234567") == archive.read("000007") == b"payload"
        assert archive.read("000009.orphan.stderr") == b"payload"
        for missing in ("000001", "7", "99999999"):
            with pytest.raises(KeyError):
                archive.read(missing)
    finally:
        archive.close()
    with zipfile.ZipFile(path) as z:
        offset = z.getinfo("000007").header_offset + 30 + 6 + 20
    with open(path, "r+b") as f:  # a disk fault in one entry's bytes
        f.seek(offset)
        f.write(b"X")
    archive = StoredArchive(path)
    try:
        with pytest.raises(zipfile.BadZipFile, match="000007"):
            archive.read("000007")
        assert archive.read("000000") == b"payload"
    finally:
        archive.close()


def test_an_archive_written_front_to_back_reads_back_every_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(storedzip, "_COUNT_LIMIT", 100)  # zip64 end records, as at 65,536 entries
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 100)
    path = tmp_path / "tasks.zip"
    with open(path, "wb") as f:
        stream = files.ForwardWriter(f, buffer_bytes=4096)
        writer = storedzip.StoredZipWriter(stream)
        writer.writestr("function.pkl", b"function")
        for chunk in range(300):
            writer.writestr(f"chunks/{chunk:06d}.pkl", str(chunk).encode() * chunk)
        writer.close()
        stream.flush()
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert storedarchive.read_stored(z, "chunks/000299.pkl") == b"299" * 299
        assert z.read("function.pkl") == b"function"
    archive = StoredArchive(str(path), prefix="chunks/", suffix=".pkl")
    try:
        assert archive.read("function.pkl") == b"function"
        assert all(archive.read(f"chunks/{c:06d}.pkl") == str(c).encode() * c for c in range(300))
        with pytest.raises(KeyError):
            archive.read("chunks/000300.pkl")
    finally:
        archive.close()


def test_a_stored_archive_reads_zipfile_data_descriptors_and_compressed_entries(tmp_path):
    path = tmp_path / "a.zip"
    with open(path, "wb") as f:  # not seekable to zipfile: sizes follow the data
        stream = files.ForwardWriter(f)
        with zipfile.ZipFile(stream, "w") as z:
            z.writestr("000000", b"described")
            z.writestr("000001", b"squeezed" * 100, compress_type=zipfile.ZIP_DEFLATED)
        stream.flush()
    archive = StoredArchive(str(path))
    try:
        assert archive.read("000000") == b"described"
        assert archive.read("000001") == b"squeezed" * 100
    finally:
        archive.close()


def test_an_archive_written_front_to_back_is_the_bytes_zipfile_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(storedzip, "_COUNT_LIMIT", 100)  # zip64 end records, as at 65,536 entries
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 100)
    entries = [("function.pkl", b"f")] + [(f"chunks/{c:06d}.pkl", bytes([c % 256]) * c)
                                          for c in range(300)]
    with open(tmp_path / "ours.zip", "wb") as f:
        stream = files.ForwardWriter(f, buffer_bytes=4096)
        writer = storedzip.StoredZipWriter(stream)
        for name, data in entries:
            writer.writestr(name, data)
        writer.close()
        stream.flush()
    with zipfile.ZipFile(tmp_path / "theirs.zip", "w", allowZip64=True) as z:
        for name, data in entries:
            with z.open(name, "w", force_zip64=True) as dst:
                dst.write(data)
    assert (tmp_path / "ours.zip").read_bytes() == (tmp_path / "theirs.zip").read_bytes()


def test_an_index_kept_by_the_writer_reads_every_entry_without_parsing_again(tmp_path, monkeypatch):
    path = str(tmp_path / "a.zip")
    index = storedarchive.ArchiveIndex()
    loads = []
    real_load = storedarchive.ArchiveIndex.load
    monkeypatch.setattr(storedarchive.ArchiveIndex, "load",
                        lambda self, f: (loads.append(1), real_load(self, f))[1])
    contents = {f"s{i}": str(i).encode() * (i + 1) for i in range(9)}
    source = _sources(tmp_path, contents)
    for batch in (range(0, 3), range(3, 7), range(7, 9)):
        extend_archive(path, {f"{i:06d}": f"s{i}" for i in batch} | {f"{batch[0]:06d}.x": "s0"},
                       source, False, index=index)
    archive = StoredArchive(path, index=index)
    try:
        assert [archive.read(f"{i:06d}") for i in range(9)] == [contents[f"s{i}"] for i in range(9)]
        assert archive.read("000003.x") == contents["s0"]
    finally:
        archive.close()
    assert loads == []  # appended entries were added to the index, never parsed back
    # An entry that would replace one is seen in the index: zipfile rewrites, and the
    # index is parsed afresh at its next use.
    extend_archive(path, {"000004": "s8"}, source, False, index=index)
    with zipfile.ZipFile(path) as z:
        assert z.read("000004") == contents["s8"] and len(z.namelist()) == 12
    archive = StoredArchive(path, index=index)
    try:
        assert archive.read("000004") == contents["s8"] and archive.read("000005") == contents["s5"]
    finally:
        archive.close()
    assert loads == [1]


def test_an_index_of_another_version_of_the_archive_is_parsed_again(tmp_path):
    path = str(tmp_path / "a.zip")
    source = _sources(tmp_path, {"a": b"first", "b": b"second"})
    index = storedarchive.ArchiveIndex()
    extend_archive(path, {"000000": "a"}, source, False, index=index)
    extend_archive(path, {"000001": "b"}, source, False)  # a writer that kept no index
    archive = StoredArchive(path, index=index)
    try:
        assert archive.read("000001") == b"second"
        with pytest.raises(KeyError):
            archive.read("000002")
    finally:
        archive.close()
