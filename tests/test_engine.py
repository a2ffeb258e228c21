"""The engine's promises that no backend changes: a function that cannot load on a node, an
unreadable result, a resume from another process and pool, straggling and never-starting
workers, a work_dir left by a driver killed while it prepared the map. On LocalPool."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import zipfile

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import workersmode
from poolparty_raster.names import parse_batch_name
from poolparty_raster.workdir import WorkDir
from poolparty_raster.schedulers import forkserver
from workdirlog import log_events

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = {"progress": False, "polling_interval": 0.2}


def test_function_that_cannot_be_imported_on_the_node_raises_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "vanishing.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing  # pickled by reference: the worker imports it again
    (tmp_path / "vanishing.py").unlink()
    with pytest.raises(ModuleNotFoundError, match="vanishing") as info:
        pp.LocalPool(2, **FAST).map(vanishing.double, range(3))
    notes = " ".join(info.value.__notes__)
    assert "while loading the function" in notes and "task 0" in notes


def dies_while_flagged(args):
    x, flag = args
    if x == 3 and os.path.exists(flag):
        os._exit(3)
    return x * 10


@pytest.mark.parametrize("mode", ["array", "workers"])
def test_unreadable_result_is_computed_again(tmp_path, mode):
    flag, work_dir = tmp_path / "flag", str(tmp_path / "w")
    flag.touch()
    tasks = [(x, str(flag)) for x in range(6)]
    with pytest.raises(pp.TaskLostError):
        pp.LocalPool(2, work_dir=work_dir, max_num_resubmissions=0, mode=mode, **FAST).map(
            dies_while_flagged, tasks, 2)
    archive = os.path.join(work_dir, "tasks.results.zip")
    with zipfile.ZipFile(archive) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    entries["000000"] = b"\x80\x05truncated"  # what a disk fault leaves
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    flag.unlink()
    assert pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, mode=mode, **FAST).map(
        dies_while_flagged, tasks, 2) == [x * 10 for x in range(6)]
    assert [e["chunk"] for e in log_events(work_dir) if e["event"] == "unreadable_output"] == [0]


def raises_then_dies_before_its_result(args):
    x, flag = args
    if x == 0 and os.path.exists(flag):
        os.unlink(flag)
        from poolparty_raster.workdir import WorkDir
        # This process dies after its chunk's exception file, before its result.
        WorkDir.write_result = lambda *args, **kwargs: os._exit(3)
        raise ValueError("raised by the attempt that died")
    return x


@pytest.mark.parametrize("mode", ["array", "workers"])
def test_an_exception_of_an_attempt_that_died_is_not_paired_with_the_next_ones_result(
        tmp_path, mode):
    flag, work_dir = tmp_path / "flag", str(tmp_path / "w")
    flag.touch()
    tasks = [(x, str(flag)) for x in range(4)]
    pool = pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, mode=mode, **FAST)
    assert pool.map(raises_then_dies_before_its_result, tasks, 2) == list(range(4))
    assert [e["chunk"] for e in log_events(work_dir) if e["event"] == "lost"] == [0]
    assert not os.path.exists(os.path.join(work_dir, "tasks.exceptions.zip"))


def silent_for_a_while(args):
    x, flag = args
    if x == 1 and os.path.exists(flag):
        os.unlink(flag)
        os.utime = lambda *args, **kwargs: None  # this worker's heartbeat stops
        time.sleep(4)
        return "the silent run"
    return x


def test_a_silent_worker_has_its_chunk_issued_once_more_and_is_neither_cancelled_nor_charged(
        tmp_path, monkeypatch):
    # A worker whose heartbeat stops may be hung, or busy in one long call that holds the GIL.
    monkeypatch.setattr(workersmode, "STALE_AFTER", 1.0)
    flag, work_dir = tmp_path / "flag", str(tmp_path / "w")
    flag.touch()
    pool = pp.LocalPool(2, mode="workers", work_dir=work_dir, keep_work_dir=True,
                        max_num_resubmissions=0, **FAST)
    assert pool.map(silent_for_a_while, [(x, str(flag)) for x in range(3)], 1) == [0, 1, 2]
    events = log_events(work_dir)
    assert [e["chunk"] for e in events if e["event"] == "reissued"] == [1]
    assert not [e for e in events if e["event"] == "lost"]


RESUMER = textwrap.dedent("""
    import os, sys
    import poolparty_raster as pp

    def record(args):
        x, words, records, flag = args
        open(os.path.join(records, str(x)), "w").close()
        if x == 3 and os.path.exists(flag):
            os._exit(5)
        return sorted(words)

    if __name__ == "__main__":
        work_dir, records, flag, workers, mode = sys.argv[1:]
        tasks = [(x, frozenset({f"w{x}", "a", "b", "c"}), records, flag) for x in range(6)]
        pool = pp.LocalPool(int(workers), work_dir=work_dir, max_num_resubmissions=0, progress=False,
                            mode=mode)
        print(pool.map(record, tasks))
""")


@pytest.mark.parametrize("mode", ["array", "workers"])
def test_resume_from_another_process_with_other_workers(tmp_path, mode):
    """Pickles of sets follow the per-process hash seed, and the default chunks follow the
    pool's parallelism: neither may stop a resume. The chunk the first map lost runs again
    (in workers mode, although the earlier workers it reattaches never ran a chunk for it)."""
    script, records, flag = tmp_path / "resumer.py", tmp_path / "records", tmp_path / "flag"
    script.write_text(RESUMER)
    records.mkdir()
    flag.touch()
    work_dir = str(tmp_path / "w")

    def run(seed: str, workers: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONHASHSEED=seed)
        return subprocess.run([sys.executable, str(script), work_dir, str(records), str(flag), workers,
                               mode],
                              capture_output=True, text=True, timeout=120, env=env)

    first = run("1", "2")
    assert first.returncode != 0 and "TaskLostError" in first.stderr
    flag.unlink()
    for name in os.listdir(records):
        os.unlink(records / name)
    second = run("2", "1")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str([sorted({f"w{x}", "a", "b", "c"}) for x in range(6)])
    assert sorted(os.listdir(records)) == ["3"]  # only the chunk that had no result ran again


def straggles_once(args):
    x, marker = args
    if x == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(120)
    time.sleep(0.1)
    return x


def test_straggling_chunk_is_issued_once_more_and_the_first_result_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(workersmode, "STRAGGLER_MIN_SECONDS", 1.0)
    work_dir = str(tmp_path / "w")
    pool = pp.LocalPool(2, mode="workers", work_dir=work_dir, keep_work_dir=True, **FAST)
    tasks = [(x, str(tmp_path / "marker")) for x in range(8)]
    assert pool.map(straggles_once, tasks, chunksize=1) == list(range(8))
    assert [e["chunk"] for e in log_events(work_dir) if e["event"] == "reissued"] == [5]


def straggles_and_its_second_run_dies(args):
    x, markers = args
    if x != 5:
        time.sleep(0.1)
        return "quick"
    runs = len(os.listdir(markers))
    open(os.path.join(markers, str(runs)), "w").close()
    if runs == 0:
        time.sleep(120)
        return "first run"
    if runs == 1:
        os._exit(3)  # the second run's worker dies
    return "third run"


def test_a_straggler_whose_second_run_died_is_issued_again(tmp_path, monkeypatch):
    monkeypatch.setattr(workersmode, "STRAGGLER_MIN_SECONDS", 1.0)
    markers, work_dir = tmp_path / "markers", str(tmp_path / "w")
    markers.mkdir()
    pool = pp.LocalPool(2, mode="workers", work_dir=work_dir, keep_work_dir=True, **FAST)
    results = pool.map(straggles_and_its_second_run_dies, [(x, str(markers)) for x in range(8)], 1)
    assert results[5] == "third run"  # not the first run's, two minutes later
    assert [e["chunk"] for e in log_events(work_dir)
            if e["event"] == "lost" and e.get("second_run")] == [5]


def test_workers_that_never_start_fail_the_map_instead_of_being_resubmitted_for_ever():
    pool = pp.LocalPool(2, mode="workers", python_path="/bin/false", max_num_resubmissions=1, **FAST)
    with pytest.raises(pp.TaskLostError, match="ended without running a chunk"):
        pool.map(abs, range(4), chunksize=1)


def test_work_dir_of_a_driver_killed_while_preparing_is_reused_and_its_leftovers_removed(tmp_path):
    work_dir = tmp_path / "w"
    WorkDir(str(work_dir)).create()  # the mark is the first thing a driver writes
    (work_dir / "driver.lock").touch()
    (work_dir / ".tasks.x1y2.tmp").write_bytes(b"PK\x03\x04half")
    (work_dir / ".tasks.results.zip.a1b2c3d4.tmp").write_bytes(b"PK\x03\x04half")  # a reduce
    (work_dir / "tasks.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # in place, no manifest yet
    pool = pp.LocalPool(2, work_dir=str(work_dir), keep_work_dir=True, **FAST)
    assert pool.map(abs, [-1, -2]) == [1, 2]
    assert not [p.name for p in work_dir.iterdir() if p.name.endswith(".tmp")]


def _refuse_to_load():
    raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")


class LoadsOnlyWhereItWasMade:
    """A result whose unpickling fails on the driver, as one of another library version's."""

    def __reduce__(self):
        return _refuse_to_load, ()


def made_there(x):
    return LoadsOnlyWhereItWasMade() if x == 1 else x


def test_a_result_that_cannot_be_unpickled_is_its_tasks_error_not_a_damaged_file(tmp_path):
    work_dir = str(tmp_path / "w")
    pool = pp.LocalPool(2, work_dir=work_dir, **FAST)
    with pytest.raises(ValueError, match="dtype size changed") as info:
        pool.map(made_there, range(3), 1)
    assert "task 1 ran, but its result cannot be unpickled" in " ".join(info.value.__notes__)
    assert not [e for e in log_events(work_dir) if e["event"] == "unreadable_output"]


def complains(x):
    print(f"task {x} complains", file=sys.stderr)
    return x


def test_a_driver_killed_between_two_archives_loses_no_captured_output_on_resume(
        tmp_path, monkeypatch):
    from poolparty_raster.workdir import WorkDir
    work_dir = str(tmp_path / "w")
    real_extend = WorkDir._extend_archive

    def stderr_archive_fails(self, kind, entries):
        if kind == "stderr":
            raise OSError(28, "No space left on device")
        real_extend(self, kind, entries)
    monkeypatch.setattr(WorkDir, "_extend_archive", stderr_archive_fails)
    pool = pp.LocalPool(2, work_dir=work_dir, keep_work_dir=True, **FAST)
    assert pool.map(complains, range(4), 2) == list(range(4))
    monkeypatch.setattr(WorkDir, "_extend_archive", real_extend)
    assert pool.map(complains, range(4), 2) == list(range(4))  # resumed: nothing runs again
    with zipfile.ZipFile(os.path.join(work_dir, "tasks.stderr.zip")) as z:
        assert z.read("000001") == b"task 2 complains\ntask 3 complains\n"


def exits(x):
    if x == 1:
        sys.exit(3)
    return x


def test_serial_pool_treats_system_exit_as_the_tasks_failure():
    with pytest.raises(SystemExit) as info:
        pp.SerialPool().map(exits, range(3))
    assert "task 1" in " ".join(info.value.__notes__)


def sleep_and_tell(args):
    x, pids = args
    open(os.path.join(pids, str(os.getpid())), "w").close()
    time.sleep(120)
    return x


def test_imap_starts_at_once_and_an_abandoned_one_cancels_its_jobs(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    pool = pp.LocalPool(2, work_dir=str(tmp_path / "w"), **FAST)
    results = pool.imap(sleep_and_tell, [(x, str(pids)) for x in range(2)])
    deadline = time.monotonic() + 60
    while len(os.listdir(pids)) < 2:  # running although nobody asked for a result yet
        assert time.monotonic() < deadline, "imap did not submit its tasks"
        time.sleep(0.05)
    del results
    deadline = time.monotonic() + 30
    while any(_alive(int(pid)) for pid in os.listdir(pids)):
        assert time.monotonic() < deadline, "the abandoned map's tasks still run"
        time.sleep(0.05)
    assert "cancelled" in [e["event"] for e in log_events(tmp_path / "w")]  # and the work_dir is kept


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def square_and_pid(x):
    return x * x, os.getpid()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_local_pool_gives_each_chunk_a_process_of_its_own(start_method):
    with pp.LocalPool(2, mode="array", start_method=start_method, **FAST) as pool:
        results = pool.map(square_and_pid, range(6), chunksize=1)
    assert [value for value, _ in results] == [x * x for x in range(6)]
    assert len({pid for _, pid in results}) == 6 and os.getpid() not in {p for _, p in results}


def test_local_pool_goes_on_when_its_fork_server_dies():
    with pp.LocalPool(2, **FAST) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
        server = forkserver.shared(sys.executable)  # the one the pool used
        server._process.kill()
        server._process.wait()
        assert pool.map(square_and_pid, range(4), chunksize=1)[3][0] == 9  # started afresh


def environment_at_exec(name):
    """The variable as the process was exec'd with it: for a chunk forked by the fork server,
    the server's environment, which the libraries it preloaded read."""
    with open("/proc/self/environ", "rb") as f:
        pairs = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return pairs.get(name.encode(), b"").decode()


def test_a_changed_thread_count_reaches_the_libraries_chunks_import(monkeypatch):
    for threads in ("1", "2"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        with pp.LocalPool(2, **FAST) as pool:
            assert pool.map(environment_at_exec, ["OMP_NUM_THREADS"]) == [threads]


HOLDER = textwrap.dedent("""
    import os, time

    def hold_three(args):
        x, flag = args
        while x == 3 and os.path.exists(flag):  # the last chunk waits while the flag is there
            time.sleep(0.05)
        return x * 10
""")
KILLED = textwrap.dedent("""
    import sys
    import poolparty_raster as pp
    from holder import hold_three

    if __name__ == "__main__":
        work_dir, flag = sys.argv[1:]
        pp.LocalPool(2, work_dir=work_dir, progress=False).map(
            hold_three, [(x, flag) for x in range(4)], chunksize=1)
""")


def test_a_resumed_map_hands_out_each_result_once(tmp_path, monkeypatch):
    """Results a killed driver never archived are loose files: counted once, not twice."""
    (tmp_path / "holder.py").write_text(HOLDER)
    (tmp_path / "killed.py").write_text(KILLED)
    flag, work_dir = tmp_path / "flag", tmp_path / "w"
    flag.touch()
    driver = subprocess.Popen([sys.executable, "killed.py", str(work_dir), str(flag)], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while sum((parse_batch_name(p.name) or (0, 1))[1]  # a batch name counts its chunks
              for p in work_dir.glob("chunk-*.result")) < 3:
        assert time.monotonic() < deadline and driver.poll() is None, "the first chunks never finished"
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    flag.unlink()  # lets the killed driver's last chunk end, and the resumed one run at once
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from holder import hold_three
    resumed = pp.LocalPool(2, work_dir=str(work_dir), **FAST).imap_unordered(
        hold_three, [(x, str(flag)) for x in range(4)], chunksize=1)
    assert sorted(resumed) == [0, 10, 20, 30]


def test_a_node_without_the_drivers_working_directory_says_so_in_the_chunks_stderr(
        tmp_path, monkeypatch):
    # Relative paths in a task would otherwise resolve, silently, from the job's own
    # directory (on Grid Engine the work_dir, removed at the end of the map).
    elsewhere = tmp_path / "driver-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    work_dir = tmp_path / "w"
    pp.LocalPool(1, mode="array", work_dir=str(work_dir), keep_work_dir=True, **FAST).map(abs, [-1])
    monkeypatch.chdir(tmp_path)
    elsewhere.rmdir()  # as on a node that has no such directory
    node = subprocess.run([sys.executable, str(work_dir / "script.py"), "0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert node.returncode == 0, node.stderr
    warning = (work_dir / "chunk-000000.stderr").read_text()
    assert "cannot enter the driver's working directory" in warning and str(elsewhere) in warning


def removes_the_directory(args):
    x, directory = args
    if x == 0:
        os.rmdir(directory)  # the driver's working directory, gone mid-map
    return x + 1


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_local_map_outlives_the_drivers_working_directory(tmp_path, monkeypatch, start_method):
    elsewhere = tmp_path / "driver-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pool = pp.LocalPool(1, mode="array", start_method=start_method, **FAST)
    assert pool.map(removes_the_directory, [(x, str(elsewhere)) for x in range(3)],
                    chunksize=1) == [1, 2, 3]


@pytest.mark.parametrize("num_workers", [0, -1])
def test_local_pool_of_no_workers_is_refused_as_multiprocessing_refuses_it(num_workers):
    with pytest.raises(ValueError, match="at least 1"):
        pp.LocalPool(num_workers)
