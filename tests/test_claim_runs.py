"""Workers mode's runs of chunks (claimmaker.py, claims.py): a worker whose chunks are fast
claims several with one name; a slow chunk stops that; a dead worker's run is freed chunk by
chunk, only the chunk it ran charged; freed chunks are claimed again once each."""
from __future__ import annotations

import collections
import json
import os
import sys
import time
import uuid

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster.claimfiles import parse_claim
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


def test_a_worker_that_frees_the_rest_of_its_run_hands_none_of_it_out_and_others_claim_it(tmp_path):
    driver = Claims(str(tmp_path / "claims"))
    driver.create()
    slow, other = Claims(driver.path), Claims(driver.path)
    assert slow.claim_next(10, "0 vm 1 t0", set(), run=10) == (0, driver.path_of(0))
    assert slow.free_unstarted() == list(range(1, 10)) and not slow.has_unstarted()
    handed_out = [0]
    for claimer, name in [(other, "1 vm 2 t1"), (slow, "0 vm 1 t0")] * 5:
        claimed = claimer.claim_next(10, name, set())
        if claimed is not None:
            assert claimed[1] == driver.path_of(claimed[0]) + ".again"  # claimed one by one
            handed_out.append(claimed[0])
    assert sorted(handed_out) == list(range(10))  # each chunk handed out once
    assert driver.freed_by_its_worker(5) and not driver.freed_by_its_worker(5)  # now known


def record_run(records: str, x: int) -> None:
    open(os.path.join(records, f"{x}.{os.getpid()}.{uuid.uuid4().hex}"), "w").close()


def later_chunks_of_its_run(work_dir: str, x: int) -> list[int]:
    """The chunks after ``x`` in the run that holds it (runs start where a claim is)."""
    for start in range(x, -1, -1):
        try:
            with open(os.path.join(work_dir, "claims", f"{start:06d}")) as f:
                return list(range(x + 1, start + parse_claim(f.read())[1]))
        except FileNotFoundError:
            continue
    return []


def block_until_the_rest_of_its_run_ran(args):
    """One chunk past 100 that is inside a run blocks until the chunks after it in its run
    have run (a minute at most): True where they did."""
    x, records, work_dir, elected = args
    record_run(records, x)
    later = later_chunks_of_its_run(work_dir, x) if x >= 100 else []
    if not later:
        return x, [], None
    try:
        os.close(os.open(elected, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return x, [], None  # another chunk blocks
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ran = {int(name.split(".")[0]) for name in os.listdir(records)}
        if ran.issuperset(later):
            return x, later, True
        time.sleep(0.01)  # polls the condition; the deadline bounds a failing test
    return x, later, False


def test_a_slow_chunk_frees_the_rest_of_its_run_for_another_worker(tmp_path):
    records, work_dir = tmp_path / "records", tmp_path / "w"
    records.mkdir()
    pool = pp.LocalPool(2, mode="workers", progress=False, work_dir=str(work_dir))
    tasks = [(x, str(records), str(work_dir), str(tmp_path / "elected")) for x in range(400)]
    results = pool.map(block_until_the_rest_of_its_run_ran, tasks, chunksize=1)
    assert [r[0] for r in results] == list(range(400))
    blocked = [r for r in results if r[2] is not None]
    assert len(blocked) == 1, "no chunk past 100 was inside a run"
    x, later, ran_meanwhile = blocked[0]
    assert ran_meanwhile  # the rest of its run ran elsewhere while it blocked
    pids = collections.defaultdict(list)
    for name in os.listdir(records):
        pids[int(name.split(".")[0])].append(name.split(".")[1])
    assert {c: len(p) for c, p in pids.items()} == {c: 1 for c in range(400)}  # none twice
    assert not set(pids[x]) & {pid for c in later for pid in pids[c]}


def held_past(claims: str, chunk: int) -> bool:
    """Whether the run claimed with ``chunk`` in it goes on past it (read in the worker)."""
    for name in os.listdir(claims):
        if name.isdigit() and int(name) <= chunk:
            with open(os.path.join(claims, name)) as f:
                if int(name) + parse_claim(f.read())[1] - 1 > chunk:
                    return True
    return False


def run_and_die_once(args):
    x, records, flag, work_dir = args
    open(os.path.join(records, f"{x}.{uuid.uuid4().hex}"), "w").close()
    if x == 40 and os.path.exists(flag):
        with open(flag + ".held", "w") as f:
            f.write("run" if held_past(os.path.join(work_dir, "claims"), 40) else "alone")
        os.unlink(flag)
        os._exit(3)  # the worker dies in chunk 40, holding the rest of its run
    return x


def test_a_worker_killed_in_a_run_costs_its_chunk_one_attempt_and_the_rest_run_again(tmp_path):
    records, flag, work_dir = tmp_path / "records", tmp_path / "flag", tmp_path / "w"
    records.mkdir()
    flag.touch()
    pool = pp.LocalPool(1, mode="workers", progress=False, polling_interval=0.2,
                        max_num_resubmissions=1, work_dir=str(work_dir), keep_work_dir=True)
    tasks = [(x, str(records), str(flag), str(work_dir)) for x in range(120)]
    assert pool.map(run_and_die_once, tasks, chunksize=1) == list(range(120))
    runs = collections.Counter(int(name.split(".")[0]) for name in os.listdir(records))
    assert runs == {x: 2 if x == 40 else 1 for x in range(120)}  # none lost, none run twice
    events = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
    assert [e["chunk"] for e in events if e["event"] == "lost"] == [40]  # the one it ran
    released = [e["chunk"] for e in events if e["event"] == "released"]
    if (tmp_path / "flag.held").read_text() == "alone":
        # chunks slower than a run's 10 ms (a loaded machine) are claimed one by one
        pytest.skip("chunk 40 was claimed alone, not in a run: nothing of a run to release")
    assert released and min(released) == 41  # the rest of its run: freed, not charged
