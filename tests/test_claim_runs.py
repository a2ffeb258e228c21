"""Workers mode's runs of chunks (claimmaker.py, claims.py): a worker whose chunks are fast
claims several with one name; a slow chunk stops that; a dead worker's run is freed chunk by
chunk, only the chunk it ran charged; freed chunks are claimed again once each."""
from __future__ import annotations

import collections
import json
import os
import sys
import uuid

import cloudpickle

import poolparty_raster as pp
from poolparty_raster.claimmaker import FAST_CHUNK_SECONDS, MAX_RUN, RUN_SECONDS, RunPacer
from poolparty_raster.claims import Claims

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def lengths(pacer: RunPacer, chunks: int, task: float, wall: float) -> list[int]:
    """The run lengths the pacer asks for while ``chunks`` chunks take these times."""
    seen = []
    for _ in range(chunks):
        seen.append(pacer.length)
        pacer.ran(task, wall)
    return seen


def test_fast_chunks_are_claimed_in_growing_runs_and_a_slow_one_stops_that():
    pacer = RunPacer()
    ramp = lengths(pacer, 1 + 4 + 16 + 64, task=1e-4, wall=2e-4)
    assert [ramp[0], ramp[1], ramp[5], ramp[21]] == [1, 4, 16, MAX_RUN]
    pacer.ran(FAST_CHUNK_SECONDS, FAST_CHUNK_SECONDS)  # one slow chunk
    assert pacer.length == 1  # the next claim takes one chunk
    pacer.ran(1e-4, 2e-4)
    assert pacer.length == 4  # and runs grow again from there


def test_a_run_is_sized_to_take_no_longer_than_run_seconds():
    pacer = RunPacer()
    lengths(pacer, 200, task=1e-4, wall=RUN_SECONDS / 10)  # fast tasks, slow to store
    assert pacer.length * RUN_SECONDS / 10 <= RUN_SECONDS and pacer.length == 8
    slow = RunPacer()
    assert set(lengths(slow, 20, task=FAST_CHUNK_SECONDS * 2, wall=0.03)) == {1}
    slow_to_store = RunPacer()  # fast tasks whose results take longer than a run may
    assert set(lengths(slow_to_store, 20, task=1e-4, wall=RUN_SECONDS * 2)) == {1}


def test_a_freed_chunk_is_claimed_again_once_and_only_its_dead_holders_claim_is_released(tmp_path):
    driver = Claims(str(tmp_path / "claims"))
    driver.create()
    dead, alive, late = Claims(driver.path), Claims(driver.path), Claims(driver.path)
    assert dead.claim_next(10, "0 vm 1 t0", set(), run=10)[0] == 0
    driver.release(4, "0 vm 1 t0")
    assert alive.claim_next(10, "1 vm 2 t1", set()) == (4, driver.path_of(4) + ".again")
    assert late.claim_next(10, "2 vm 3 t2", set()) is None  # nothing else is free
    driver.release(4, "0 vm 1 t0")  # a second release of the dead holder's chunk (a stale view)
    assert driver.held()[4][0] == "1 vm 2 t1"  # leaves the live worker's claim alone
    driver.release(4, "1 vm 2 t1")  # that worker died too
    assert late.claim_next(10, "2 vm 3 t2", set()) == (4, driver.path_of(4) + ".again")
    held = driver.held()
    assert held[4][0] == "2 vm 3 t2" and {c for c, (h, _) in held.items() if h == "0 vm 1 t0"} \
        == set(range(10)) - {4}


def run_and_die_once(args):
    x, records, flag = args
    open(os.path.join(records, f"{x}.{uuid.uuid4().hex}"), "w").close()
    if x == 40 and os.path.exists(flag):
        os.unlink(flag)
        os._exit(3)  # the worker dies in chunk 40, holding the rest of its run
    return x


def test_a_worker_killed_in_a_run_costs_its_chunk_one_attempt_and_the_rest_run_again(tmp_path):
    records, flag, work_dir = tmp_path / "records", tmp_path / "flag", tmp_path / "w"
    records.mkdir()
    flag.touch()
    pool = pp.LocalPool(1, mode="workers", progress=False, polling_interval=0.2,
                        max_num_resubmissions=1, work_dir=str(work_dir), keep_work_dir=True)
    tasks = [(x, str(records), str(flag)) for x in range(120)]
    assert pool.map(run_and_die_once, tasks, chunksize=1) == list(range(120))
    runs = collections.Counter(int(name.split(".")[0]) for name in os.listdir(records))
    assert runs == {x: 2 if x == 40 else 1 for x in range(120)}  # none lost, none run twice
    events = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
    assert [e["chunk"] for e in events if e["event"] == "lost"] == [40]  # the one it ran
    released = [e["chunk"] for e in events if e["event"] == "released"]
    assert released and min(released) == 41  # the rest of its run: freed, not charged
