"""Workers mode: claims are exclusive under contention, and scaling follows its rules."""
from __future__ import annotations

import multiprocessing
import os
import sys

import cloudpickle

import poolparty_raster as pp
from poolparty_raster.workdir import Manifest, WorkDir

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _claim_all(path: str, worker: int, num_chunks: int, out) -> None:
    work_dir = WorkDir(path)
    claimed = []
    while (claim := work_dir.claims.claim_next(num_chunks, str(worker), set())) is not None:
        claimed.append(claim[0])
    out.put(claimed)


def test_each_chunk_is_claimed_exactly_once_under_contention(tmp_path):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    work_dir.write_manifest(Manifest("x", 300, list(range(300)), "pp-test", "workers"))
    work_dir.claims.create()
    out = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_claim_all, args=(work_dir.path, w, 300, out)) for w in range(8)]
    for process in workers:
        process.start()
    claimed = [chunk for _ in workers for chunk in out.get(timeout=120)]
    for process in workers:
        process.join(60)
    assert sorted(claimed) == list(range(300))


def test_a_worker_takes_chunks_freed_behind_it_and_skips_finished_ones(tmp_path):
    claims = WorkDir(str(tmp_path / "w")).claims
    os.makedirs(os.path.dirname(claims.path))
    claims.create()
    other = type(claims)(claims.path)  # a second worker
    assert claims.claim_next(5, "0", done={1})[0] == 0
    assert other.claim_next(5, "1", set())[0] == 1  # its own view: 1 is not done for it
    claims.release(0)  # worker 0's first chunk died with it and was freed by the driver
    taken = [claims.claim_next(5, "0", done={1})[0] for _ in range(3)]
    assert taken == [2, 3, 4]
    assert claims.claim_next(5, "0", done={1})[0] == 0  # found when nothing lies ahead
    assert claims.claim_next(5, "0", done={1}) is None
    claims.remove()
    assert other.claim_next(5, "1", set()) is None  # the map ended


def pid_of_task(x):
    return os.getpid()


def test_few_long_lived_workers_run_many_chunks(tmp_path):
    pool = pp.LocalPool(2, mode="workers", max_workers=2, progress=False,
                        work_dir=str(tmp_path / "w"), keep_work_dir=True)
    pids = pool.map(pid_of_task, range(40), chunksize=1)
    assert len(set(pids)) <= 2  # 40 chunks, but no more than two worker processes
    assert not os.path.exists(tmp_path / "w" / "claims")
