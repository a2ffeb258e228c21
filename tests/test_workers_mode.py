"""Workers mode: claims are exclusive under contention, and scaling follows its rules."""
from __future__ import annotations

import collections
import errno
import multiprocessing
import os
import sys
import uuid
import zipfile

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster.manifest import Manifest
from poolparty_raster.workdir import WorkDir

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _no_hard_links(src, dst):
    raise OSError(errno.EPERM, "Operation not permitted", dst)


def _claim_all(path: str, worker: int, num_chunks: int, out, hard_links: bool, go) -> None:
    if not hard_links:  # this child process sees a filesystem without hard links
        os.link = _no_hard_links
    work_dir = WorkDir(path)
    claimed = []
    run = 2 + worker % 4 * 3  # workers claiming runs of 2, 5, 8 and 11 chunks side by side
    go.wait()  # all at once
    while (claim := work_dir.claims.claim_next(num_chunks, str(worker), set(), run)) is not None:
        claimed.append(claim[0])
    out.put((str(worker), claimed))


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "o-excl-files"])
def test_each_chunk_is_claimed_exactly_once_under_contention(tmp_path, hard_links):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    work_dir.write_manifest(Manifest("x", 300, list(range(300)), "pp-test", "workers"))
    work_dir.claims.create()
    out, go = multiprocessing.Queue(), multiprocessing.Event()
    workers = [multiprocessing.Process(target=_claim_all,
                                       args=(work_dir.path, w, 300, out, hard_links, go))
               for w in range(8)]
    for process in workers:
        process.start()
    go.set()
    by_worker = dict(out.get(timeout=120) for _ in workers)
    claimed = [chunk for chunks in by_worker.values() for chunk in chunks]
    for process in workers:
        process.join(60)
    assert sorted(claimed) == list(range(300))  # runs of different lengths never overlap
    held = work_dir.claims.held()
    assert {c: holder for c, (holder, _) in held.items()} == {
        c: worker for worker, chunks in by_worker.items() for c in chunks}
    if hard_links:
        claim_names = [n for n in os.listdir(work_dir.claims.path) if n.isdigit()]
        assert len(claim_names) <= 150  # a name a run of two chunks or more


def test_a_claim_shows_its_worker_and_takes_its_heartbeat(tmp_path):
    claims = WorkDir(str(tmp_path / "w")).claims
    os.makedirs(os.path.dirname(claims.path))
    claims.create()
    first, _ = claims.claim_next(3, "0 vm 11", set())
    chunk, path = claims.claim_next(3, "0 vm 11", set())
    os.utime(path, (1_000_000, 1_000_000))  # what the worker's heartbeat thread does
    held = claims.held()
    assert held[chunk] == ("0 vm 11", 1_000_000)
    assert set(held) == {first, chunk}  # the worker's badge is not a claim
    # A finished chunk's claim is not looked at again: its holder is known, its beat moot.
    assert claims.held(finished={first}) == {first: ("0 vm 11", 0.0), chunk: ("0 vm 11", 1_000_000)}


def test_a_link_whose_reply_was_lost_is_still_the_workers_claim(tmp_path, monkeypatch):
    # On NFS a LINK request sent again after a lost reply fails with EEXIST, although the
    # first one made the link.
    real_link = os.link

    def link_then_lose_the_reply(src, dst):
        real_link(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists", dst)
    monkeypatch.setattr(os, "link", link_then_lose_the_reply)
    claims = WorkDir(str(tmp_path / "w")).claims
    os.makedirs(os.path.dirname(claims.path))
    claims.create()
    other = type(claims)(claims.path)
    assert claims.claim_next(3, "0", set())[0] == 0
    assert other.claim_next(3, "1", set())[0] == 1  # 0 exists and is not its link


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


def test_a_released_claim_file_is_read_again_for_the_worker_that_claims_it_next(
        tmp_path, monkeypatch):
    # Without hard links a claim is a file of its own; the one a dead worker held is removed,
    # and the next claim of that chunk may get its inode back (ext4 hands it out again).
    monkeypatch.setattr(os, "link", _no_hard_links)
    claims = WorkDir(str(tmp_path / "w")).claims
    os.makedirs(os.path.dirname(claims.path))
    claims.create()
    dead, alive = type(claims)(claims.path), type(claims)(claims.path)
    assert dead.claim_next(2, "0 vm 11 t0", set())[0] == 0
    assert alive.claim_next(2, "1 vm 12 t1", set())[0] == 1
    assert claims.held()[0][0] == "0 vm 11 t0"
    claims.release(0)  # what the driver does once worker 0 is gone
    assert alive.claim_next(2, "1 vm 12 t1", set())[0] == 0
    assert claims.held()[0][0] == "1 vm 12 t1"


def test_workers_side_by_side_claim_runs_along_the_chain_with_one_name_a_run(tmp_path, monkeypatch):
    claims = WorkDir(str(tmp_path / "w")).claims
    os.makedirs(os.path.dirname(claims.path))
    claims.create()
    other = type(claims)(claims.path)
    links = []
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda src, dst: (links.append(dst), real_link(src, dst))[1])
    assert [claims.claim_next(20, "0", set(), run=4)[0] for _ in range(4)] == [0, 1, 2, 3]
    assert links == [claims.path_of(0)]  # one name for the run of four
    # The other tries where it thinks the chain ends, finds the run there and steps past it.
    assert other.claim_next(20, "1", set(), run=8) == (4, claims.path_of(4))
    assert claims.claim_next(20, "0", set(), run=2) == (12, claims.path_of(12))
    assert len(links) == 5  # 0; the other: 0 refused, 4; this one: 4 refused, 12
    held = claims.held()
    assert {c: h for c, (h, _) in held.items()} == {**dict.fromkeys([0, 1, 2, 3, 12, 13], "0"),
                                                     **dict.fromkeys(range(4, 12), "1")}
    # The run is clipped at the map's end; then nothing is left.
    taken = [claim[0] for claim in iter(lambda: other.claim_next(20, "1", set(), run=64), None)]
    assert taken == [*range(5, 12), *range(14, 20)]
    assert claims.claim_next(20, "0", set(), run=64) == (13, claims.path_of(12))
    assert claims.claim_next(20, "0", set(), run=64) is None


def record_run(args):
    x, records, flag = args
    open(os.path.join(records, f"{x}.{uuid.uuid4().hex}"), "w").close()
    if x == 57 and os.path.exists(flag):
        os.unlink(flag)
        os._exit(3)  # this worker dies in the middle of its chunk
    return x


def runs_of_a_map_whose_worker_dies_at_57(tmp_path) -> collections.Counter[int]:
    """How often each of 200 one-task chunks ran, in a map whose worker dies in chunk 57."""
    records, flag = tmp_path / "records", tmp_path / "flag"
    records.mkdir()
    flag.touch()
    pool = pp.LocalPool(4, mode="workers", progress=False, polling_interval=0.2)
    tasks = [(x, str(records), str(flag)) for x in range(200)]
    assert pool.map(record_run, tasks, chunksize=1) == list(range(200))
    return collections.Counter(int(name.split(".")[0]) for name in os.listdir(records))


def test_each_chunk_runs_exactly_once_unless_its_worker_died(tmp_path):
    assert runs_of_a_map_whose_worker_dies_at_57(tmp_path) == {
        x: 2 if x == 57 else 1 for x in range(200)}


def pid_of_task(x):
    return os.getpid()


def test_few_long_lived_workers_run_many_chunks(tmp_path):
    pool = pp.LocalPool(2, mode="workers", max_workers=2, progress=False,
                        work_dir=str(tmp_path / "w"), keep_work_dir=True)
    pids = pool.map(pid_of_task, range(40), chunksize=1)
    assert len(set(pids)) <= 2  # 40 chunks, but no more than two worker processes
    assert not os.path.exists(tmp_path / "w" / "claims")


def prints_then_dies_on_five(x):
    if x in (2, 5):
        print(f"chunk {x} speaking", file=sys.stderr, flush=True)
    if x == 5:
        os._exit(3)
    return x


def test_a_workers_capture_goes_to_the_chunk_it_ran(tmp_path):
    """Workers name their captures after themselves: what a chunk printed still reaches that
    chunk's record, and a dead worker's output its dying chunk's report alone."""
    path = tmp_path / "w"
    pool = pp.LocalPool(1, mode="workers", max_num_resubmissions=0, progress=False,
                        polling_interval=0.2, work_dir=str(path))
    with pytest.raises(pp.TaskLostError) as info:
        pool.map(prints_then_dies_on_five, range(8), chunksize=1)
    assert info.value.stderr_tails == {5: ["chunk 5 speaking"]}
    with zipfile.ZipFile(path / "tasks.stderr.zip") as z:
        assert z.read("000002") == b"chunk 2 speaking\n"
        assert z.read("000005.attempt-1.stderr") == b"chunk 5 speaking\n"
        assert not [n for n in z.namelist() if n.startswith(("000000", "000001", "000003"))]


def test_a_dead_workers_captures_are_told_from_a_later_process_with_its_pid(tmp_path):
    from poolparty_raster.names import worker_capture_name
    from poolparty_raster.claimwatch import holder_token

    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    dead, reborn = "vm-4242-1000", "vm-4242-2000"  # the pid came back for a new worker
    for token in (dead, reborn):
        for stream in ("stdout", "stderr"):
            open(work_dir.file(worker_capture_name(token, stream)), "w").close()
    token = holder_token(f"3 vm 4242 {dead}")
    assert sorted(work_dir.worker_captures(token)) == [
        worker_capture_name(dead, "stderr"), worker_capture_name(dead, "stdout")]
    assert len(work_dir.worker_captures()) == 4


def plus_one(x):
    return x + 1


@pytest.mark.parametrize("fixture, pool_class, second_task", [
    ("dummy_slurm", pp.SlurmArrayPool, 1), ("dummy_sge", pp.SgePool, 2)])
def test_workers_still_running_when_the_map_ends_are_cancelled(request, fixture, pool_class,
                                                               second_task):
    # A worker that runs but has not started Python yet (a slow node) would start after the
    # work_dir is gone; on Grid Engine that is an Eqw job for ever.
    queue = request.getfixturevalue(fixture)
    queue.inject_slow(30, task=second_task)
    pool = pool_class(mode="workers", max_workers=2, progress=False, polling_interval=0.3,
                      filesystem_lag=0.3)
    assert pool.map(plus_one, range(4), chunksize=1) == list(range(1, 5))
    assert queue.wait_idle(30)
    assert sorted(j["state"] for j in queue.jobs()) == ["CANCELLED", "COMPLETED"], queue.jobs()


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "o-excl-files"])
def test_a_survey_keeps_nothing_of_finished_chunks_but_their_holders(tmp_path, monkeypatch,
                                                                    hard_links):
    if not hard_links:
        monkeypatch.setattr(os, "link", _no_hard_links)
    claims = WorkDir(str(tmp_path / "w")).claims
    os.makedirs(os.path.dirname(claims.path))
    claims.create()
    first, second = type(claims)(claims.path), type(claims)(claims.path)
    taken = [first.claim_next(6, "0 vm 11 t0", set())[0] for _ in range(3)]
    taken += [second.claim_next(6, "1 vm 12 t1", set())[0] for _ in range(2)]
    assert taken == [0, 1, 2, 3, 4]
    claims.reissue(4)
    assert first.claim_next(6, "0 vm 11 t0", set())[0] == 5
    assert first.claim_next(6, "0 vm 11 t0", set()) == (4, claims.path_of(4) + ".dup")
    view = claims.survey(finished={0, 1, 2, 3})
    assert {c: holder for c, (holder, _) in view.claims.items()} == {4: "1 vm 12 t1",
                                                                   5: "0 vm 11 t0"}
    assert view.duplicated == {4: "0 vm 11 t0"}
    assert view.holders == {"0 vm 11 t0", "1 vm 12 t1"}
    assert claims.survey(finished={0, 1, 2, 3, 4, 5}).claims == {}
    probed = claims.probe([3, 5, 6], second_runs=[4, 5])
    assert {c: holder for c, (holder, _) in probed.claims.items()} == {3: "1 vm 12 t1",
                                                                     5: "0 vm 11 t0"}
    assert probed.duplicated == {4: "0 vm 11 t0"}
    assert claims.holder_of(1) == "0 vm 11 t0" and claims.holder_of(6) == ""
    claims.remove()
    assert not os.path.exists(claims.path)
    claims.remove()  # gone already: nothing to do


@pytest.mark.parametrize("listing", ["every-poll", "once"])
def test_claims_listed_seldom_still_show_a_dead_workers_chunk(tmp_path, monkeypatch, listing):
    # Past PROBE_AT_MOST chunks left the driver lists claims/ as seldom as its cost asks;
    # in between it looks only at the claims it saw running. A worker that ended makes the
    # next poll list, so its chunk is released all the same.
    from poolparty_raster import claimwatch

    monkeypatch.setattr(claimwatch, "PROBE_AT_MOST", 0)
    if listing == "once":
        monkeypatch.setattr(claimwatch, "LISTING_SHARE", 1e12)
    assert runs_of_a_map_whose_worker_dies_at_57(tmp_path) == {
        x: 2 if x == 57 else 1 for x in range(200)}


def silent_for_a_while(args):
    x, flag = args
    if x == 1 and os.path.exists(flag):
        os.unlink(flag)
        os.utime = lambda *args, **kwargs: None  # this worker's heartbeat stops
        import time
        time.sleep(4)
        return "the silent run"
    return x


def test_a_silent_worker_is_seen_through_listings_of_claims(tmp_path, monkeypatch):
    import json

    from poolparty_raster import claimwatch, workersmode

    monkeypatch.setattr(claimwatch, "PROBE_AT_MOST", 0)  # claims/ listed, not probed by name
    monkeypatch.setattr(workersmode, "STALE_AFTER", 1.0)
    flag, work_dir = tmp_path / "flag", tmp_path / "w"
    flag.touch()
    pool = pp.LocalPool(2, mode="workers", work_dir=str(work_dir), keep_work_dir=True,
                        max_num_resubmissions=0, progress=False, polling_interval=0.2)
    assert pool.map(silent_for_a_while, [(x, str(flag)) for x in range(3)], 1) == [0, 1, 2]
    events = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
    assert [e["chunk"] for e in events if e["event"] == "reissued"] == [1]
    assert not [e for e in events if e["event"] == "lost"]
