"""Batched result commits (workers mode): a worker holds the results of a run's consecutive
chunks and commits them with one name, ``chunk-NNNNNN+K.result``. Nothing held counts as done;
a committed batch counts all its chunks done, reads each alone, and its name goes once all its
chunks are archived or discarded; a new driver (a resumed map) reads every committed batch."""
from __future__ import annotations

import collections
import os
import sys
import time
import uuid

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import resultlog
from poolparty_raster.names import batch_result_name, loose_name
from poolparty_raster.resultlog import ResultLog
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def work_dir(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    return work_dir


def payload(chunk: int) -> bytes:
    return f"result of {chunk}".encode() * 3


FIRST = 999  # a worker links its first result at once: whether the filesystem has links


def started_log(work_dir: WorkDir) -> ResultLog:
    log = ResultLog(work_dir.path)
    work_dir.write_result(FIRST, payload(FIRST), log)
    return log


def hold(log: ResultLog, work_dir: WorkDir, chunks) -> None:
    log.batching = True
    for chunk in chunks:
        work_dir.write_result(chunk, payload(chunk), log)


def result_names(work_dir: WorkDir) -> list[str]:
    return sorted(n for n in os.listdir(work_dir.path)
                  if n.endswith(".result") and n != loose_name(FIRST, "result"))


def finished(work_dir: WorkDir) -> set[int]:
    return work_dir.finished_chunks() - {FIRST}


def test_held_results_count_for_nothing_until_one_name_commits_them_all(work_dir):
    log = started_log(work_dir)
    hold(log, work_dir, range(10, 13))
    assert log.commit_due() is not None and finished(work_dir) == set()
    log.commit()
    assert result_names(work_dir) == [batch_result_name(10, 3)] and log.commit_due() is None
    assert finished(work_dir) == {10, 11, 12}
    assert [work_dir.read_output(c, "result") for c in (12, 10, 11)] == \
        [payload(12), payload(10), payload(11)]


def test_a_chunk_that_does_not_follow_commits_the_held_ones_first(work_dir):
    log = started_log(work_dir)
    hold(log, work_dir, [3, 4, 7])  # 7 does not follow 4
    assert result_names(work_dir) == [batch_result_name(3, 2)]
    log.batching = False  # a chunk claimed alone (freed, a second run): committed at once
    work_dir.write_result(9, payload(9), log)
    assert result_names(work_dir) == [batch_result_name(3, 2), loose_name(7, "result"),
                                      loose_name(9, "result")]  # 7 alone: its own name
    assert {c: work_dir.read_output(c, "result") for c in (3, 4, 7, 9)} == \
        {c: payload(c) for c in (3, 4, 7, 9)}


def test_a_batch_name_goes_once_every_chunk_of_it_is_archived(work_dir):
    log = started_log(work_dir)
    hold(log, work_dir, range(5))
    log.close()
    work_dir.scan()
    work_dir.reduce({0: ["result"], 1: ["result"]})
    assert result_names(work_dir) == [batch_result_name(0, 5)]  # 2-4 still loose in it
    assert finished(work_dir) == set(range(5))
    assert work_dir.archived_chunks() == {0, 1}
    work_dir.reduce({2: ["result"], 3: ["result"], 4: ["result"]})
    assert result_names(work_dir) == [] and work_dir.archived_chunks() == set(range(5))
    assert [work_dir.read_output(c, "result") for c in range(5)] == [payload(c) for c in range(5)]


def test_a_discarded_chunk_of_a_batch_counts_no_more_and_its_rerun_result_counts(work_dir):
    log = started_log(work_dir)
    hold(log, work_dir, range(3))
    log.commit()
    work_dir.scan()
    work_dir.discard_loose(1)  # unreadable, say: the map runs it again
    assert finished(work_dir) == {0, 2}
    log.batching = False
    work_dir.write_result(1, b"again", log)  # its rerun, claimed alone
    assert finished(work_dir) == {0, 1, 2} and work_dir.read_output(1, "result") == b"again"
    work_dir.reduce({0: ["result"], 1: ["result"], 2: ["result"]})
    assert result_names(work_dir) == []
    assert work_dir.read_output(1, "result") == b"again"


def test_a_new_driver_reads_every_committed_batch(work_dir):
    log = started_log(work_dir)
    hold(log, work_dir, range(4))
    log.commit()
    hold(log, work_dir, range(6, 8))
    log.close()
    killed = WorkDir(work_dir.path)
    killed.scan()
    killed.reduce({0: ["result"]})  # then killed: the batch name stays for 1-3
    resumed = WorkDir(work_dir.path)
    assert finished(resumed) == {0, 1, 2, 3, 6, 7}
    assert {c: resumed.read_output(c, "result") for c in (0, 1, 2, 3, 6, 7)} == \
        {c: payload(c) for c in (0, 1, 2, 3, 6, 7)}
    fresh = WorkDir(work_dir.path)  # reads before any scan of its own
    assert fresh.read_output(7, "result") == payload(7)


def test_batches_across_full_logs_read_back_and_write_each_record_once(work_dir):
    log = ResultLog(work_dir.path, max_records=3)
    work_dir.write_result(FIRST, payload(FIRST), log)
    for first in (0, 4):
        hold(log, work_dir, range(first, first + 4))
        log.commit()
    assert result_names(work_dir) == [batch_result_name(0, 4), batch_result_name(4, 4)]
    def size(chunks) -> int:
        return resultlog.HEAD_SIZE + sum(24 + len(payload(c)) for c in chunks)  # once each

    assert os.stat(work_dir.file(batch_result_name(0, 4))).st_size == size([FIRST, 0, 1, 2, 3])
    assert os.stat(work_dir.file(batch_result_name(4, 4))).st_size == size(range(4, 8))  # a new log
    assert [work_dir.read_output(c, "result") for c in range(8)] == [payload(c) for c in range(8)]


def test_a_dead_workers_held_records_are_adopted_by_the_driver_not_run_again(work_dir):
    log = started_log(work_dir)
    hold(log, work_dir, range(20, 23))  # appended, not linked: then the worker is killed
    os.close(log._fd)  # what the kernel does for a killed process
    assert finished(work_dir) == set()
    assert [work_dir.adopt_result(c) for c in (21, 23)] == [True, False]  # 23: never ran
    assert finished(work_dir) == {21}
    assert work_dir.read_output(21, "result") == payload(21)


def test_without_hard_links_held_results_become_files(work_dir, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    log = started_log(work_dir)
    hold(log, work_dir, range(3))
    monkeypatch.setattr(resultlog.os, "link", no_links)
    log.commit()
    assert result_names(work_dir) == [loose_name(c, "result") for c in range(3)]
    assert {c: work_dir.read_output(c, "result") for c in range(3)} == \
        {c: payload(c) for c in range(3)}


def wait_for_earlier_results(args):
    """Chunk 150 blocks until the chunks before it have results in the work_dir (a minute
    at most): what its worker held of its run must be committed meanwhile."""
    x, records, work_dir = args
    open(os.path.join(records, f"{x}.{uuid.uuid4().hex}"), "w").close()
    if x != 150:
        return x, -1
    run_start = max(c for c in range(x + 1) if os.path.exists(
        os.path.join(work_dir, "claims", f"{c:06d}")))  # runs start where claims are
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if WorkDir(work_dir).finished_chunks() >= set(range(150)):
            return x, run_start
        time.sleep(0.01)  # polls the condition; the deadline bounds a failing test
    return x, None


def test_results_held_behind_a_long_chunk_are_committed_while_it_runs(tmp_path):
    records, work_dir = tmp_path / "records", tmp_path / "w"
    records.mkdir()
    pool = pp.LocalPool(1, mode="workers", progress=False, work_dir=str(work_dir))
    tasks = [(x, str(records), str(work_dir)) for x in range(200)]
    results = pool.map(wait_for_earlier_results, tasks, chunksize=1)
    assert [r[0] for r in results] == list(range(200))
    run_start = results[150][1]
    assert run_start is not None  # the chunks before it counted done while it ran,
    assert run_start < 150  # of its own run too: held, then committed by the worker's watch
    runs = collections.Counter(int(name.split(".")[0]) for name in os.listdir(records))
    assert runs == {x: 1 for x in range(200)}
