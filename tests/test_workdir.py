"""The driver's view of a work_dir: what a scan reports as files come and go, and tasks.zip
written in one pass."""
from __future__ import annotations

import os
import zipfile

import cloudpickle
import pytest

from poolparty_raster.files import read_stored
from poolparty_raster.names import live_capture_name
from poolparty_raster.workdir import TasksWriter, WorkDir


def test_a_scan_follows_loose_files_and_an_entry_it_handed_out_stays_as_it_was(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    work_dir.write_loose(3, "stderr", b"warning\n")
    capture = live_capture_name(5, "stdout")
    open(work_dir.file(capture), "wb").close()
    first = work_dir.scan()
    kept = first[3]
    assert first == {3: {"final": ["stderr"], "live": []},
                     5: {"final": [], "live": [capture]}}
    work_dir.write_result(3, b"\x80\x05N.")
    work_dir.write_loose(4, "result", b"\x80\x05N.")
    second = work_dir.scan()
    assert second[3] == {"final": ["result", "stderr"], "live": []}
    assert kept == {"final": ["stderr"], "live": []}  # what the first scan said of chunk 3
    work_dir.discard_loose(3)
    assert sorted(work_dir.scan()) == [4, 5]
    assert sorted(WorkDir(work_dir.path).scan()) == [4, 5]  # a fresh view agrees


def test_tasks_zip_written_in_one_pass_reads_back_every_chunk(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    writer = TasksWriter(work_dir.path, cloudpickle.dumps(abs))
    for chunk in range(300):
        writer.add_chunk([chunk, -chunk])
    writer.finish()
    os.replace(writer.tmp_path, work_dir.tasks_path)
    with zipfile.ZipFile(work_dir.tasks_path) as archive:
        assert archive.testzip() is None  # every entry's checksum holds
    assert work_dir.load_function() is abs
    assert [work_dir.load_tasks(c) for c in (0, 299)] == [[0, 0], [299, -299]]


def test_an_entry_read_at_its_offset_is_checked_and_a_compressed_one_still_reads(tmp_path):
    path = str(tmp_path / "a.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("stored", b"s" * 100)
        archive.writestr("big", b"b" * 100, compress_type=zipfile.ZIP_STORED)
        archive.writestr("deflated", b"d" * 1000, compress_type=zipfile.ZIP_DEFLATED)
        with archive.open("zip64", "w", force_zip64=True) as entry:
            entry.write(b"z" * 100)
    with zipfile.ZipFile(path) as archive:
        assert [read_stored(archive, n) for n in ("stored", "deflated", "zip64")] == [
            b"s" * 100, b"d" * 1000, b"z" * 100]
        offset = archive.getinfo("big").header_offset + 30 + len("big") + 50
    with open(path, "r+b") as f:  # one byte of an entry's data changes on disk
        f.seek(offset)
        f.write(b"X")
    with zipfile.ZipFile(path) as archive, pytest.raises(zipfile.BadZipFile, match="big"):
        read_stored(archive, "big")


def test_a_line_cut_off_by_a_full_disk_leaves_the_earlier_lines_and_the_next_one_readable(
        tmp_path, monkeypatch):
    import errno

    from poolparty_raster import files
    path = str(tmp_path / "jobs.jsonl")
    files.append_line(path, {"job_id": "1"})
    real_write = os.write
    calls = []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space"):
        files.append_line(path, {"job_id": "2"})
    monkeypatch.setattr(os, "write", real_write)
    files.append_line(path, {"job_id": "3"})  # space again
    assert [r["job_id"] for r in files.read_jsonl(path)] == ["1", "3"]
