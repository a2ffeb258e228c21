"""Result logs (workers mode): a chunk's result is a record in its worker's log and a hard link
to it. Each result reads back alone, through a torn tail, a rotation and a reduce; a damaged or
missing record is reported as unreadable (the map computes the chunk again); a filesystem
without hard links gets result files."""
from __future__ import annotations

import errno
import os
import pickle
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

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


def _rewrite(path: str, data: bytes) -> None:
    """New content at the very inode ``path`` names: what a filesystem that reuses a freed
    log's inode for a new log does, forced."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def test_a_new_log_at_a_reused_inode_reads_as_the_new_log(work_dir, tmp_path):
    log = ResultLog(work_dir.path)
    for chunk in range(3):
        work_dir.write_result(chunk, f"old {chunk} ".encode() * 50, log)
    assert work_dir.read_output(0, "result") == b"old 0 " * 50  # the driver knows the log now
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    new_log = ResultLog(str(elsewhere))  # another worker's: another id, other offsets
    payloads = {chunk: f"new {chunk} ".encode() * 40 * chunk for chunk in range(3, 9)}
    for chunk, payload in payloads.items():
        new_log.publish(str(elsewhere / loose_name(chunk, "result")), chunk, payload)
    held = work_dir.file(loose_name(0, "result"))
    inode = os.stat(held).st_ino
    _rewrite(held, (elsewhere / loose_name(3, "result")).read_bytes())
    for chunk in payloads:
        os.link(held, work_dir.file(loose_name(chunk, "result")))
    for chunk in range(3):  # the old log's results were reduced: its inode was free
        os.unlink(work_dir.file(loose_name(chunk, "result")))
    assert {os.stat(work_dir.file(loose_name(c, "result"))).st_ino for c in payloads} == {inode}
    assert {c: work_dir.read_output(c, "result") for c in payloads} == payloads


@pytest.mark.parametrize("first", [1, 5], ids=["a-moved-record", "a-new-record"])
def test_a_log_rewritten_in_place_under_its_own_id_reads_as_rewritten(work_dir, first):
    log = ResultLog(work_dir.path)
    for chunk in range(3):
        work_dir.write_result(chunk, f"before {chunk}".encode(), log)
    path = work_dir.file(loose_name(0, "result"))
    assert work_dir.read_output(0, "result") == b"before 0"  # the driver knows the log now
    with open(path, "rb") as f:
        head = f.read(resultlog.HEAD_SIZE)  # the same id: the driver's entry for it is wrong
    payloads = {chunk: f"after {chunk}".encode() * (chunk + 3) for chunk in (2, 1, 4, 5)}
    _rewrite(path, head + b"".join(
        resultlog._HEADER.pack(resultlog.MAGIC, chunk, len(payload), zlib.crc32(payload)) + payload
        for chunk, payload in payloads.items()))
    for chunk in (4, 5):
        os.link(path, work_dir.file(loose_name(chunk, "result")))
    # chunk 1's entry points into chunk 2's record now, and where the entry's parse stopped
    # into chunk 1's: either read finds what the log holds, by parsing it afresh
    assert work_dir.read_output(first, "result") == payloads[first]
    assert {c: work_dir.read_output(c, "result") for c in payloads} == payloads


def test_a_plain_result_and_a_log_are_told_apart_by_their_first_bytes(work_dir):
    plain = {0: pickle.dumps(None, protocol=5),  # shorter than a log's header
             1: pickle.dumps(([b"x" * 100], []), protocol=5), 2: b""}
    for chunk, data in plain.items():
        work_dir.write_result(chunk, data)
    logged = {3: pickle.dumps(None, protocol=5), 4: resultlog.MAGIC, 5: b""}
    for chunk, data in logged.items():
        work_dir.write_result(chunk, data, ResultLog(work_dir.path))  # a log each
    heads = {c: Path(work_dir.file(loose_name(c, "result"))).read_bytes()[:resultlog.HEAD_SIZE]
             for c in (*plain, *logged)}
    assert not any(resultlog.is_log(heads[c]) for c in plain)
    assert all(resultlog.is_log(heads[c]) for c in logged)
    assert len({heads[c] for c in logged}) == len(logged)  # every log has an id of its own
    assert {c: work_dir.read_output(c, "result") for c in (*plain, *logged)} == {**plain, **logged}


def test_a_result_reads_again_as_often_as_asked(work_dir):
    log = ResultLog(work_dir.path, max_records=4)
    payloads = {chunk: f"value {chunk}".encode() for chunk in range(10)}
    for chunk, payload in payloads.items():
        work_dir.write_result(chunk, payload, log)
    for _ in range(3):
        assert {c: work_dir.read_output(c, "result") for c in payloads} == payloads
    assert work_dir.read_output(9, "result") == payloads[9]


def test_the_driver_forgets_where_the_results_it_archived_were(work_dir):
    """What the index holds does not grow with the map: the driver reads a million results
    of one map, each twice (for its consumer, then to archive it). An entry costs over 150
    bytes; the bound allows for what the interpreter keeps of freed ones (2,000 tuples)."""
    count = 4000
    log = ResultLog(work_dir.path, max_records=500)
    for chunk in range(count):
        work_dir.write_result(chunk, b"%d" % chunk, log)
    tracemalloc.start()
    try:
        for chunk in range(count):
            assert work_dir.read_output(chunk, "result") == b"%d" % chunk
            if chunk % 500 == 499:  # a reduce archives what the consumer had
                work_dir.reduce({c: ["result"] for c in range(chunk - 499, chunk + 1)})
        held = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, resultlog.__file__)])
    finally:
        tracemalloc.stop()
    assert sum(stat.size for stat in held.statistics("filename")) < 40 * count
    with zipfile.ZipFile(work_dir.archive_path("result")) as z:
        assert len(z.namelist()) == count


def test_the_driver_forgets_a_log_that_reads_went_past(work_dir):
    """A result the reduce archived before the consumer had it (the consumer reads it from
    the archive) is read once through its log: where it was goes with the log once reads
    have gone elsewhere for long."""
    count = 6000
    past, current = ResultLog(work_dir.path, max_records=count), ResultLog(work_dir.path)
    for chunk in range(count):
        work_dir.write_result(chunk, b"%d" % chunk, past)
    for chunk in range(count, count + 1000):
        work_dir.write_result(chunk, b"%d" % chunk, current)
    index = resultlog.LogIndex(idle_reads=500)

    def read(chunk: int) -> bytes:
        fd = os.open(work_dir.file(loose_name(chunk, "result")), os.O_RDONLY)
        try:
            return index.read(fd, chunk, loose_name(chunk, "result"))
        finally:
            os.close(fd)
    tracemalloc.start()
    try:
        assert all(read(chunk) == b"%d" % chunk for chunk in range(count))
        assert read(0) == b"0"  # a second read: it indexes the second reads still to come
        assert all(read(chunk) == b"%d" % chunk for chunk in range(count, count + 1000))
        held = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, resultlog.__file__)])
    finally:
        tracemalloc.stop()
    assert sum(stat.size for stat in held.statistics("filename")) < 50 * count
    assert read(1) == b"1"  # a log forgotten reads again


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
