"""LocalPool's processes do not outlive their driver or a terminate(), and workers mode keeps
each chunk's run single across a driver's death: workers stop claiming once no driver holds the
work_dir, and a resumed driver waits for the earlier driver's workers instead of running their
chunks again (issue 21, items 8 and 9)."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import poolparty_raster as pp

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="parent-death signals and /proc are Linux's")

# Tasks defined here travel by value: a worker need not import this module (and pytest).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# The driver of a workers-mode map, run as a script so that the test can SIGKILL it. Each run
# of a task appends its index to runs/<pid of the worker process>, so the runs of each task
# can be counted, and the worker processes found. A task waits for the file GATE while its
# worker has HOLD in its environment (a worker the test starts itself).
DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import poolparty_raster as pp

    RUNS, GATE = {runs!r}, {gate!r}

    def square(x):
        path = os.path.join(RUNS, str(os.getpid()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(fd, f"{{x}}\\n".encode())
        os.close(fd)
        while os.environ.get("HOLD") and not os.path.exists(GATE):
            time.sleep(0.02)
        time.sleep({seconds})  # the task's work
        return x * x

    if __name__ == "__main__":
        work_dir, workers, resubmissions, start_method = sys.argv[1:]
        pool = pp.LocalPool(int(workers), mode="workers", work_dir=work_dir, keep_work_dir=True,
                            max_num_resubmissions=int(resubmissions), start_method=start_method,
                            progress=False, polling_interval=0.2)
        results = pool.map(square, range({tasks}), chunksize=1)
        with open(work_dir + ".results.json", "w") as f:
            json.dump(results, f)
""")


class Map:
    """A map's driver scripts, its work_dir and what its tasks recorded."""

    def __init__(self, tmp_path, tasks: int, seconds: float):
        self.tmp_path, self.tasks = tmp_path, tasks
        self.runs, self.gate = tmp_path / "runs", tmp_path / "gate"
        self.runs.mkdir()
        self.work_dir = tmp_path / "w"
        (tmp_path / "driver.py").write_text(DRIVER.format(
            runs=str(self.runs), gate=str(self.gate), seconds=seconds, tasks=tasks))
        self.processes: list[subprocess.Popen] = []  # killed at the end of the test

    def _start(self, argv, log_name, env=None) -> subprocess.Popen:
        with open(self.tmp_path / log_name, "ab") as log:
            process = subprocess.Popen(argv, cwd=self.tmp_path, env=env, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def drive(self, workers=2, resubmissions=3, start_method="forkserver") -> subprocess.Popen:
        return self._start([sys.executable, "driver.py", str(self.work_dir), str(workers),
                            str(resubmissions), start_method], "driver.log")

    def start_worker(self, worker: int) -> subprocess.Popen:
        """A worker job as a cluster would run it: not a child of any driver. Its tasks wait
        for the gate."""
        return self._start([sys.executable, str(self.work_dir / "script.py"), str(worker)],
                           f"worker{worker}.log", env={**os.environ, "HOLD": "1"})

    def runs_by_pid(self) -> dict[int, list[int]]:
        return {int(name): [int(x) for x in (self.runs / name).read_text().split()]
                for name in os.listdir(self.runs)}

    def run_counts(self) -> collections.Counter[int]:
        return collections.Counter(x for runs in self.runs_by_pid().values() for x in runs)

    def results(self) -> list[int]:
        return json.loads((self.tmp_path / "w.results.json").read_text())

    def holder_pids(self) -> set[int]:
        """The worker processes named by the claims' badges: "<worker> <host> <pid> <token>"."""
        claims = self.work_dir / "claims"
        return {int((claims / name).read_text().split()[2])
                for name in os.listdir(claims) if name.startswith("worker.")}

    def log(self) -> str:
        return (self.tmp_path / "driver.log").read_text()


@pytest.fixture
def make_map(tmp_path):
    """Map(tmp_path, ...); what its drivers and workers left running (a test that failed)
    is killed afterwards."""
    made = []

    def make(**options) -> Map:
        made.append(Map(tmp_path, **options))
        return made[-1]
    yield make
    for run in made:
        for process in run.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_for(condition, timeout: float, what: str, *, unless=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if unless is not None:
            unless()
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead for us
    except FileNotFoundError:
        return False


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of the living processes below ``root``, from
    /proc."""
    parents, commands = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{name}/cmdline", "rb") as f:
                commands[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            parents[int(name)] = int(ppid)
    found: dict[int, tuple[int, str]] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found.update((pid, (parents[pid], commands.get(pid, ""))) for pid in frontier)
    return found


def still_running(driver: subprocess.Popen, log) -> None:
    assert driver.poll() is None, f"the driver ended (exit {driver.returncode}):\n{log()}"


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_killed_drivers_workers_die_with_it_and_its_resume_runs_no_finished_chunk_again(
        make_map, start_method):
    run = make_map(tasks=300, seconds=0.02)
    driver = run.drive(workers=4, start_method=start_method)
    wait_for(lambda: sum(run.run_counts().values()) >= 40, 120, "the map to get going",
             unless=lambda: still_running(driver, run.log))
    started = descendants(driver.pid)  # the fork server (or the workers themselves)
    assert started
    driver.kill()
    driver.wait()

    # Nothing the driver started runs on: not its fork server, not a worker of the map.
    processes = set(started) | run.holder_pids() | set(run.runs_by_pid())
    wait_for(lambda: not any(map(alive, processes)), 10, "the killed driver's processes to end")
    first = run.runs_by_pid()
    in_flight = {runs[-1] for runs in first.values()}  # the chunk each worker was running
    assert sum(map(len, first.values())) < run.tasks, "its workers ran on to the map's end"

    # The resume may not charge the dead workers' chunks: it has no resubmission to spare.
    resume = run.drive(workers=4, resubmissions=0, start_method=start_method)
    assert resume.wait(120) == 0, run.log()
    assert run.results() == [x * x for x in range(run.tasks)]
    counts = run.run_counts()
    assert set(counts) == set(range(run.tasks))
    twice = {x for x, n in counts.items() if n > 1}
    assert twice <= in_flight and max(counts.values()) <= 2, (twice, in_flight)


def _driver_killed_while_a_foreign_worker_holds_a_chunk(make_map
                                                        ) -> tuple[Map, subprocess.Popen, int]:
    """A map whose driver was SIGKILLed while a worker it did not start (a cluster job of its,
    or an earlier driver's: the test starts it) runs one of its chunks, held at the gate.
    Returns the map, that worker and the chunk it holds."""
    run = make_map(tasks=300, seconds=0.05)
    driver = run.drive(workers=1)
    wait_for(lambda: (run.work_dir / "claims").is_dir(), 60, "the map to start",
             unless=lambda: still_running(driver, run.log))
    worker = run.start_worker(99)
    # its file is created before its chunk is written into it: wait for the chunk
    wait_for(lambda: run.runs_by_pid().get(worker.pid), 60, "the worker to take a chunk",
             unless=lambda: still_running(driver, run.log))
    (held,) = run.runs_by_pid()[worker.pid]
    started = descendants(driver.pid)
    driver.kill()
    driver.wait()
    wait_for(lambda: not any(map(alive, started)), 10, "the driver's own processes to end")
    assert worker.poll() is None  # not the driver's: it runs on, held at the gate
    return run, worker, held


def test_a_worker_stops_claiming_chunks_once_no_driver_holds_the_work_dir(make_map):
    run, worker, held = _driver_killed_while_a_foreign_worker_holds_a_chunk(make_map)
    done_before = sum(run.run_counts().values())
    run.gate.touch()
    assert worker.wait(60) == 0  # it finished its chunk, and found no driver to work for
    ran = run.runs_by_pid()[worker.pid]
    assert ran[0] == held
    # It looks for its driver every few seconds (a few 0.05 s chunks): nowhere near the
    # hundreds of chunks left, which it would have run for a dead driver.
    assert len(ran) < 100
    assert done_before + len(ran) < run.tasks - 100


def test_a_resumed_driver_waits_for_an_earlier_workers_chunk_and_does_not_charge_it(make_map):
    run, worker, held = _driver_killed_while_a_foreign_worker_holds_a_chunk(make_map)
    in_flight = {runs[-1] for pid, runs in run.runs_by_pid().items() if pid != worker.pid}
    # Resumed with no resubmission to spare: the held chunk is neither run again nor lost.
    resume = run.drive(workers=2, resubmissions=0)
    others = set(range(run.tasks)) - {held}
    wait_for(lambda: others <= set(run.run_counts()), 120, "every other chunk to run",
             unless=lambda: still_running(resume, run.log))
    assert worker.poll() is None and run.run_counts()[held] == 1
    run.gate.touch()
    assert resume.wait(120) == 0, run.log()
    assert worker.wait(60) == 0
    assert run.results() == [x * x for x in range(run.tasks)]
    counts = run.run_counts()
    assert counts[held] == 1
    assert {x for x, n in counts.items() if n > 1} <= in_flight


def record_pid(args):
    x, pids = args
    open(os.path.join(pids, str(os.getpid())), "a").close()
    time.sleep(0.05)
    return x


@pytest.mark.parametrize("method, start_method", [
    ("map_async", "forkserver"), ("map_async", "spawn"),
    ("imap", "forkserver")])
def test_terminate_right_after_a_map_starts_leaves_no_task_process_running(
        tmp_path, method, start_method):
    pids = tmp_path / "pids"
    pids.mkdir()
    for attempt in range(10):
        before = descendants(os.getpid())
        pool = pp.LocalPool(4, mode="workers", start_method=start_method, progress=False,
                            polling_interval=0.2, work_dir=str(tmp_path / f"w{attempt}"))
        tasks = [(x, str(pids)) for x in range(400)]
        if method == "map_async":
            result = pool.map_async(record_pid, tasks, chunksize=1)
        else:
            results = pool.imap(record_pid, tasks, chunksize=1)
        try:
            time.sleep(0.005 * attempt)  # terminate at 0 to 45 ms after the start
            pool.terminate()
            # Once terminate() returns, no process of the map runs: neither one whose task
            # has recorded its pid, nor one that was being started.
            assert not [pid for pid in map(int, os.listdir(pids)) if alive(pid)], attempt
            # The fork server is this process's child (shared by every LocalPool of it); what
            # it forked runs the map's chunks, with the server's command line.
            left = {pid: command for pid, (ppid, command) in descendants(os.getpid()).items()
                    if pid not in before
                    and not (ppid == os.getpid() and "schedulers.forkserver" in command)}
            assert not left, (attempt, left)
            with pytest.raises(pp.MapTerminated):
                result.get(timeout=60) if method == "map_async" else next(results)
        finally:
            if method == "imap":  # a failure's traceback keeps it: it must not hold the map
                results.close()
