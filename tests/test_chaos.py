"""Chaos: the driver is SIGKILLed at random moments of its progress, and once while it
rewrites an archive (a reduce), then the map is resumed until it completes. Every result must be right and stored
once, and only chunks in flight at a kill may have run twice (issue 21)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="LocalPool's workers die with their driver on Linux")

# Each run of a task appends "S <index> <time>" before its work and "E <index> <time>" after
# it to one file (O_APPEND: whole lines), so the test knows which runs were in flight when.
DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import poolparty_raster as pp

    RUNS = {runs!r}

    def record(x):
        fd = os.open(RUNS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"S {{x}} {{time.time()}}\\n".encode())
            value = x * x
            os.write(fd, f"E {{x}} {{time.time()}}\\n".encode())
        finally:
            os.close(fd)
        return value

    if __name__ == "__main__":
        work_dir, kind = sys.argv[1:]
        # Kept: a driver killed after a clean map removed its work_dir (before it handed the
        # results over) would leave nothing to resume from, and the next run would be a new map.
        options = dict(work_dir=work_dir, keep_work_dir=True, progress=False,
                       polling_interval=0.2, max_num_resubmissions=0)
        if kind == "local_workers":
            pool = pp.LocalPool(2, mode="workers", **options)
        elif kind == "local_array":
            pool = pp.LocalPool(2, mode="array", **options)
        else:
            pool = pp.SlurmArrayPool(mode="workers", max_workers=3, filesystem_lag=0.5, **options)
        results = pool.map(record, range({tasks}), chunksize=1)
        with open(work_dir + ".results.json", "w") as f:
            json.dump(results, f)
""")

TASKS = {"local_workers": 3000, "local_array": 1500, "dummy_slurm_workers": 1500}
# A run that started this long after a kill, or ended this long before one, was not in flight
# at that kill: the killed driver's processes die within it (a parent-death signal).
GRACE = 0.5


def reducing(work_dir: str) -> bool:
    """Whether the driver is rewriting an archive now: its temporary file exists."""
    try:
        return any(name.startswith(".tasks.") and ".zip." in name  # .tasks.results.zip.*.tmp
                   for name in os.listdir(work_dir))
    except FileNotFoundError:
        return False


def ended_runs(runs) -> int:
    try:
        return runs.read_bytes().count(b"E ")
    except FileNotFoundError:
        return 0


def kill_when(process: subprocess.Popen, runs, moment: str, target: int,
              deadline: float) -> float | None:
    """SIGKILL the driver once ``target`` runs have ended (moment "progress"), or as soon as
    it is seen rewriting an archive (moment "reduce"); returns when, or None when it finished
    first."""
    while process.poll() is None and time.monotonic() < deadline:
        if (reducing(process.args[2]) if moment == "reduce" else ended_runs(runs) >= target):
            killed_at = time.time()
            process.send_signal(signal.SIGKILL)
            process.wait()
            return killed_at
        time.sleep(0.001)
    return None


def read_runs(path) -> dict[int, list[list[float | None]]]:
    """{task: [[start, end or None], ...]} in the order the runs started."""
    runs: dict[int, list[list[float | None]]] = {}
    for line in path.read_text().splitlines():
        kind, index, when = line.split()
        if kind == "S":
            runs.setdefault(int(index), []).append([float(when), None])
        else:
            open_runs = [r for r in runs[int(index)] if r[1] is None]
            open_runs[0][1] = float(when)
    return runs


@pytest.mark.parametrize("kind", list(TASKS))
def test_killed_drivers_resume_to_exactly_once_results(tmp_path, kind, request):
    if kind.startswith("dummy_slurm"):
        request.getfixturevalue("dummy_slurm")
    tasks = TASKS[kind]
    runs = tmp_path / "runs.txt"
    (tmp_path / "driver.py").write_text(DRIVER.format(runs=str(runs), tasks=tasks))
    work_dir = str(tmp_path / "w")
    rng = random.Random(f"{kind}-{os.getpid()}-{time.time_ns()}")
    moments = ["progress", "reduce", "progress"]
    kills: list[float] = []
    killed_during: list[str] = []
    log = open(tmp_path / "driver.log", "ab")
    try:
        for moment in moments:
            process = subprocess.Popen([sys.executable, "driver.py", work_dir, kind],
                                       cwd=tmp_path, stdout=log, stderr=log)
            done = ended_runs(runs)
            target = done + int(rng.uniform(0.05, 0.6) * (tasks - min(done, tasks)))
            killed = kill_when(process, runs, moment, target, time.monotonic() + 120)
            if killed is None:  # it finished before the moment came: nothing more to kill
                assert process.wait() == 0
                break
            kills.append(killed)
            killed_during.append(moment)
        else:
            final = subprocess.run([sys.executable, "driver.py", work_dir, kind], cwd=tmp_path,
                                   stdout=log, stderr=log, timeout=240)
            assert final.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        log.close()
    assert "reduce" in killed_during, ("no driver was killed while it rewrote an archive",
                                       killed_during)
    results = json.loads((tmp_path / "w.results.json").read_text())
    assert results == [x * x for x in range(tasks)]
    repeated = {}
    for task, task_runs in read_runs(runs).items():
        for start, end in task_runs[:-1]:  # every run but the last was superseded
            in_flight = any(start <= kill + GRACE and (end is None or end >= kill - GRACE)
                            for kill in kills)
            assert in_flight, (task, start, end, kills)
        if len(task_runs) > 1:
            repeated[task] = len(task_runs)
    assert len(repeated) <= len(kills) * 10, repeated  # a handful per kill, not a resubmission storm
