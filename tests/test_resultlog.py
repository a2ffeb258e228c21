"""Result logs (workers mode): a chunk's result is a record in its worker's log and a hard link
to it. Each result reads back alone, through a torn tail, a rotation and a reduce; a damaged or
missing record is reported as unreadable (the map computes the chunk again); a filesystem
without hard links gets result files."""
from __future__ import annotations

import errno
import os
import sys
import zipfile

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import resultlog
from poolparty_raster.resultlog import ResultLog
from poolparty_raster.names import loose_name
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def work_dir(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    return work_dir


def _logs(work_dir: WorkDir) -> list[str]:
    return sorted(n for n in os.listdir(work_dir.path) if resultlog.is_log_name(n))


def test_every_result_reads_back_alone_and_outlives_its_log_name(work_dir):
    log = ResultLog(work_dir.path)
    payloads = {chunk: f"result of {chunk}".encode() * (chunk + 1) for chunk in range(5)}
    for chunk, payload in payloads.items():
        work_dir.write_result(chunk, payload, log)
    results = [work_dir.file(loose_name(c, "result")) for c in payloads]
    assert len({os.stat(p).st_ino for p in results}) == 1  # links, not files
    log.close()
    assert _logs(work_dir) == []
    assert {c: work_dir.read_output(c, "result") for c in payloads} == payloads


def test_a_full_log_is_retired_and_its_results_stay_readable(work_dir):
    log = ResultLog(work_dir.path, max_records=3)
    for chunk in range(7):
        work_dir.write_result(chunk, bytes([chunk]) * 10, log)
        assert len(_logs(work_dir)) <= 1  # retired logs keep no name of their own
    inodes = {os.stat(work_dir.file(loose_name(c, "result"))).st_ino for c in range(7)}
    assert len(inodes) == 3  # 3 + 3 + 1 records
    assert [work_dir.read_output(c, "result") for c in range(7)] == [bytes([c]) * 10 for c in range(7)]


def test_a_log_past_its_size_is_retired(work_dir):
    log = ResultLog(work_dir.path, max_bytes=100)
    for chunk in range(4):
        work_dir.write_result(chunk, bytes([chunk]) * 40, log)  # 64 bytes a record
    inodes = [os.stat(work_dir.file(loose_name(c, "result"))).st_ino for c in range(4)]
    assert inodes[0] == inodes[1] != inodes[2] == inodes[3]
    assert [work_dir.read_output(c, "result") for c in range(4)] == [bytes([c]) * 40 for c in range(4)]


def test_a_torn_tail_hides_nothing_before_it(work_dir):
    log = ResultLog(work_dir.path)
    work_dir.write_result(0, b"first", log)
    with open(log.path, "ab") as f:  # a worker killed while it appended chunk 1's record
        f.write(resultlog._HEADER.pack(resultlog.MAGIC, 1, 1000, 0) + b"only part")
    os.link(log.path, work_dir.file(loose_name(1, "result")))  # what no worker does: a name for it
    assert work_dir.read_output(0, "result") == b"first"
    with pytest.raises(ValueError, match="no complete result of chunk 1"):
        work_dir.read_output(1, "result")


def test_a_damaged_record_fails_its_checksum(work_dir):
    log = ResultLog(work_dir.path)
    work_dir.write_result(0, b"intact payload", log)
    with open(log.path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"XYZ")  # a disk fault
    with pytest.raises(ValueError, match="checksum"):
        work_dir.read_output(0, "result")


def test_the_first_result_of_a_chunk_wins(work_dir):
    log = ResultLog(work_dir.path)
    work_dir.write_result(0, b"first run", log)
    work_dir.write_result(0, b"straggler's second run", ResultLog(work_dir.path))
    assert work_dir.read_output(0, "result") == b"first run"


def test_without_hard_links_results_are_files(work_dir, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", dst)
    monkeypatch.setattr(os, "link", no_links)
    log = ResultLog(work_dir.path)
    work_dir.write_result(0, b"plain", log)
    work_dir.write_result(1, b"plain too", log)
    assert not log.hard_links and _logs(work_dir) == []
    assert os.stat(work_dir.file(loose_name(0, "result"))).st_nlink == 1
    assert [work_dir.read_output(c, "result") for c in (0, 1)] == [b"plain", b"plain too"]


def test_a_log_with_all_the_links_it_can_have_gives_way_to_a_new_one(work_dir, monkeypatch):
    link, refusals = os.link, []

    def full_once(src, dst):
        if not refusals:
            refusals.append(src)
            raise OSError(errno.EMLINK, "Too many links", src)
        link(src, dst)
    monkeypatch.setattr(os, "link", full_once)
    log = ResultLog(work_dir.path)
    work_dir.write_result(0, b"after EMLINK", log)
    assert log.path != refusals[0] and not os.path.exists(refusals[0])
    assert work_dir.read_output(0, "result") == b"after EMLINK"


def test_a_reduce_archives_the_record_alone(work_dir):
    log = ResultLog(work_dir.path)
    for chunk in range(3):
        work_dir.write_result(chunk, f"value {chunk}".encode(), log)
    work_dir.reduce({0: ["result"], 1: ["result"]})
    with zipfile.ZipFile(work_dir.archive_path("result")) as z:
        assert {n: z.read(n) for n in z.namelist()} == {"000000": b"value 0", "000001": b"value 1"}
    assert not os.path.exists(work_dir.file(loose_name(0, "result")))
    assert work_dir.read_output(2, "result") == b"value 2"


def dies_once(args):
    x, flag = args
    if x == 5 and os.path.exists(flag):
        os.unlink(flag)
        os._exit(9)  # the worker dies holding its result log open
    return x * x


def test_a_kept_work_dir_holds_no_result_log_after_a_worker_died(tmp_path):
    flag, path = tmp_path / "flag", tmp_path / "w"
    flag.touch()
    pool = pp.LocalPool(2, mode="workers", progress=False, polling_interval=0.2,
                        work_dir=str(path), keep_work_dir=True)
    assert pool.map(dies_once, [(x, str(flag)) for x in range(20)], chunksize=1) == [
        x * x for x in range(20)]
    names = os.listdir(path)
    assert not [n for n in names if resultlog.is_log_name(n) or n.startswith("chunk-")]
    with zipfile.ZipFile(path / "tasks.results.zip") as z:
        assert len(z.namelist()) == 20


def test_successive_reduces_keep_every_entry_and_a_rerun_replaces_its_own(work_dir):
    for chunk in range(4):
        work_dir.write_result(chunk, f"first {chunk}".encode())
        work_dir.reduce({chunk: ["result"]})
    work_dir.write_result(2, b"second 2")  # chunk 2 ran again (its entry was unreadable)
    work_dir.reduce({2: ["result"]})
    with zipfile.ZipFile(work_dir.archive_path("result")) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["000000", "000001", "000002", "000003"]
        assert [z.read(chunk_key) for chunk_key in sorted(z.namelist())] == [
            b"first 0", b"first 1", b"second 2", b"first 3"]
