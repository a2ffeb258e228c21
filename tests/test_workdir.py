"""The driver's view of a work_dir: what a scan reports as files come and go, and tasks.zip
written in one pass."""
from __future__ import annotations

import os
import zipfile

import cloudpickle
import pytest

from poolparty_raster.storedarchive import read_stored
from poolparty_raster.names import live_capture_name
from poolparty_raster.taskszip import TasksWriter
from poolparty_raster.workdir import WorkDir


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


def test_a_result_archived_after_it_was_read_is_the_file_it_was(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    for chunk in range(4):
        work_dir.write_loose(chunk, "result", b"\x80\x05" + bytes([chunk]) * (chunk + 1))
    work_dir.write_loose(4, "result", b"big" * 10_000)  # too big to be kept: read again
    work_dir.scan()
    assert work_dir.read_output(1, "result") == b"\x80\x05" + b"\x01" * 2  # kept for its reduce
    assert work_dir.read_output(4, "result") == b"big" * 10_000
    work_dir.discard_loose(2)  # unreadable, say: gone, and forgotten
    work_dir.write_loose(2, "result", b"again")
    work_dir.reduce({c: ["result"] for c in range(5)})
    assert work_dir.scan() == {}
    with zipfile.ZipFile(work_dir.archive_path("result")) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {
            "000000": b"\x80\x05\x00", "000001": b"\x80\x05\x01\x01", "000002": b"again",
            "000003": b"\x80\x05\x03\x03\x03\x03", "000004": b"big" * 10_000}
    assert [work_dir.read_output(c, "result") for c in (1, 2)] == [b"\x80\x05\x01\x01", b"again"]
    work_dir.close()


def test_a_scan_tells_a_result_alone_from_one_with_other_files(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    work_dir.write_loose(1, "result", b"r")
    work_dir.write_loose(2, "stderr", b"e")
    assert work_dir.scan() == {1: {"final": ["result"], "live": []},
                               2: {"final": ["stderr"], "live": []}}
    work_dir.write_loose(2, "result", b"r")
    work_dir.discard_loose(1)
    work_dir.write_loose(3, "result", b"r")
    assert work_dir.scan() == {2: {"final": ["result", "stderr"], "live": []},
                               3: {"final": ["result"], "live": []}}
    work_dir.discard_loose(2, ("stderr",))
    work_dir.write_loose(1, "stdout", b"o")
    assert work_dir.scan() == {1: {"final": ["stdout"], "live": []},
                               2: {"final": ["result"], "live": []},
                               3: {"final": ["result"], "live": []}}
    assert WorkDir(work_dir.path).scan() == work_dir.scan()


def test_a_chunk_set_is_a_set_of_the_maps_chunks():
    from poolparty_raster.chunkset import ChunkSet

    chunks = ChunkSet(10, [3, 1, 3, 12, -1])
    assert sorted(chunks) == list(chunks) == [1, 3] and len(chunks) == 2
    chunks |= {7}
    chunks.discard(1)
    chunks.discard(99)
    assert chunks == {3, 7} and 7 in chunks and 1 not in chunks and 10 not in chunks
    assert -3 not in chunks and "x" not in chunks
    assert list(chunks.missing()) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert chunks.first_missing(3) == 4 and ChunkSet(2, [0, 1]).first_missing() == 2
    copy = chunks.copy()
    copy.add(0)
    assert 0 not in chunks and len(copy) == 3
    with pytest.raises(IndexError):
        chunks.add(10)


def test_plain_tasks_are_pickled_as_cloudpickle_pickles_them():
    from poolparty_raster import taskszip

    for tasks in ([1], [2**70, -1.5, "x", b"y", None, True, 1j], [(1, "a"), ()]):
        assert taskszip._dumps(tasks) == cloudpickle.dumps(tasks)
    assert cloudpickle.loads(taskszip._dumps([lambda x: x + 1]))[0](1) == 2  # by value


def test_a_manifest_keeps_its_chunk_starts_compact_and_reads_them_back(tmp_path):
    import array

    from poolparty_raster.manifest import Manifest

    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    for starts, kept in ((array.array("q", range(0, 200_000, 2)), range(0, 200_000, 2)),
                         ([0, 1, 5], array.array("q", [0, 1, 5])), ([0], range(0, 1)), ([], None)):
        manifest = Manifest("d", 200_001, starts, "job", "workers")
        if kept is not None:
            assert manifest.chunk_starts == kept and type(manifest.chunk_starts) is type(kept)
        work_dir.write_manifest(manifest)
        assert work_dir.read_manifest() == manifest


def test_the_driver_holds_a_few_result_logs_open_and_none_once_it_removes_results(tmp_path):
    from poolparty_raster import looseresults, resultlog

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    for worker in range(looseresults.LOGS_HELD + 3):  # a log each
        log = resultlog.ResultLog(work_dir.path)
        work_dir.write_result(worker, b"%d" % worker, log)
        log.close()
    work_dir.scan()
    before = open_fds()
    assert [work_dir.read_output(c, "result") for c in range(11)] == [b"%d" % c for c in range(11)]
    assert work_dir.read_output(10, "result") == b"10"  # again, from a log held open
    assert open_fds() - before == looseresults.LOGS_HELD
    work_dir.reduce({c: ["result"] for c in range(11)})
    assert open_fds() == before
    assert [work_dir.read_output(c, "result") for c in (0, 10)] == [b"0", b"10"]  # archived
    work_dir.close()
