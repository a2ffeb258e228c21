"""The work_dir on a networked filesystem beside the local disk (issue 28): LocalPool's
one-task chunks in workers and array mode with the work_dir on the GlusterFS volume
(ci/gluster/bringup.sh) and on ext4, interleaved in one run; the filesystem calls a chunk
costs, traced (driver and workers apart); how long a name a node's client made takes to show
on the driver's client (``filesystem_lag``); and the real SLURM with its jobs on the
volume's second client, where it runs.

``python -m bench filesystems`` (registered in bench/__main__.py), or alone:
``python -m bench.filesystems [--quick]``; ``python -m bench.filesystems trace ROOT MODE N``
runs one traced map (what the rows use)."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import poolparty_raster as pp
from bench.common import ROOT, Row, interleaved, skipped, verdict

GLUSTER = os.environ.get("GLUSTER_CI_DIR", "/srv/poolparty-gluster/shared")
SLURMD_PID = "/run/slurmd.pid"
WORK_PREFIX = "pp-bench-fs-"  # the maps' work_dirs' parents: what the traces count


def gluster_absent() -> str | None:
    with open("/proc/self/mounts") as f:
        mounts = {fields[1]: fields[2] for fields in map(str.split, f)}
    if mounts.get(GLUSTER) != "fuse.glusterfs":
        return f"{GLUSTER} is not a GlusterFS mount (run `sudo bash ci/bringup-all.sh`)"
    return None


def one_map(root: str, mode: str, n: int) -> None:
    """n one-task chunks on LocalPool(2), the work_dir new under ``root`` (removed after)."""
    parent = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root)
    try:
        with pp.LocalPool(2, mode=mode, progress=False,
                          work_dir=os.path.join(parent, "w")) as pool:
            assert pool.map(abs, range(n), chunksize=1) == list(range(n))
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _local_rows(quick: bool) -> list[Row]:
    sizes = {"workers": 200 if quick else 2000, "array": 50 if quick else 500}
    repeats = 1 if quick else 3
    roots = {"GlusterFS": GLUSTER, "ext4": tempfile.gettempdir()}
    one_map(roots["ext4"], "workers", 4)  # the fork server starts once, untimed
    runs = {f"{fs} {mode}": (lambda r=root, m=mode: one_map(r, m, sizes[m]))
            for mode in sizes for fs, root in roots.items()}
    t = interleaved(runs, repeats)
    out = []
    for mode, n in sizes.items():
        for fs, root in roots.items():
            seconds = t[f"{fs} {mode}"]
            calls = traced_calls(root, mode, min(n, 2000))
            target, ok = "-", None
            if fs == "GlusterFS" and mode == "workers":
                target, ok = "<= 1 ms a chunk", seconds / n <= 0.001
            elif fs == "GlusterFS":  # 3x workers mode's 1 ms, plus the interpreters' starts
                starts = t[f"ext4 {mode}"] / n  # (the same map on the local disk)
                target = f"<= ext4's + 3 ms a chunk ({(starts + 0.003) * 1000:.2f} ms)"
                ok = seconds / n <= starts + 0.003
            out.append((f"LocalPool(2), {n:,} one-task chunks, {mode} mode, work_dir on {fs}",
                        f"{seconds:.2f} s, {seconds / n * 1000:.2f} ms a chunk; calls a chunk: "
                        f"{calls}", target, "-" if ok is None else verdict(ok)))
    return out


def traced_calls(root: str, mode: str, n: int) -> str:
    """The work_dir's filesystem calls a chunk, driver and workers apart, from one map run
    under ``strace -f`` (slower: its wall time is not reported)."""
    if shutil.which("strace") is None:
        return "no strace"
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(["strace", "-f", "-qq", "-y", "-o", trace, "-e",
                        "trace=%file,%desc,clone,clone3,fork,vfork", sys.executable, "-m",
                        "bench.filesystems", "trace", root, mode, str(n)],
                       check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        driver, workers = count_calls(trace, os.path.join(root, WORK_PREFIX))
    return (f"driver {sum(driver.values()) / n:.1f} ({_top(driver, n)}), workers "
            f"{sum(workers.values()) / n:.1f} ({_top(workers, n)}); of which to the server: "
            f"driver {_to_server(driver) / n:.1f}, workers {_to_server(workers) / n:.1f}")


# Calls that a networked filesystem's server answers: those on a path (a lookup at least),
# listings, writes (FUSE and NFS send them on, unless cached for writeback), and closes (a
# flush). Calls on an open descriptor that the kernel answers (lseek, fstat, reads from the
# page cache, dup2, fcntl) are counted above but not here.
_SERVER_CALLS = {"openat", "open", "creat", "close", "write", "pwrite64", "rename", "renameat",
                 "renameat2", "link", "linkat", "unlink", "unlinkat", "getdents64", "mkdir",
                 "mkdirat", "rmdir", "chdir", "newfstatat", "stat", "lstat", "statx", "access",
                 "faccessat", "faccessat2", "readlink", "readlinkat", "fsync", "fdatasync",
                 "utimensat", "chmod", "fchmodat", "flock"}


def _to_server(calls: collections.Counter) -> int:
    return sum(count for name, count in calls.items() if name in _SERVER_CALLS)


def _top(calls: collections.Counter, n: int) -> str:
    return ", ".join(f"{name} {count / n:.2f}" for name, count in calls.most_common(5))


_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)")
_ON_DESCRIPTOR = re.compile(r"newfstatat\(\d+<[^>]*>, \"\"")
_RESULT = re.compile(r"= (\d+)(?:<[^>]*>)?\s*$")


def count_calls(trace: str, root: str) -> tuple[collections.Counter, collections.Counter]:
    """(driver's, workers') calls naming a path that starts with ``root`` in an ``strace -f`` log: a
    thread (CLONE_THREAD) counts with its process; the process strace started is the
    driver, every other process a worker's (LocalPool's fork server among them: it stats each
    chunk's script and files what chunks print)."""
    group: dict[str, str] = {}
    flags: dict[str, bool] = {}  # an unfinished clone's: whether it makes a thread
    driver, workers = collections.Counter(), collections.Counter()
    first = None
    with open(trace, errors="replace") as f:
        for line in f:
            match = _LINE.match(line)
            if match is None:
                continue
            pid, call = match.groups()
            first = first or pid
            group.setdefault(pid, pid)
            if call in ("clone", "clone3", "fork", "vfork"):
                if "<unfinished" in line:
                    flags[pid] = "CLONE_THREAD" in line
                    continue
                thread = flags.pop(pid, False) or "CLONE_THREAD" in line
                child = _RESULT.search(line)
                if child:
                    group[child.group(1)] = group[pid] if thread else child.group(1)
            elif root in line and "resumed>" not in line:  # a call counts once, at its start
                if call == "newfstatat" and _ON_DESCRIPTOR.search(line):
                    call = "fstat"  # of an open file: the kernel's cached attributes
                (driver if group[pid] == first else workers)[call] += 1
    return driver, workers


_NODE_SIDE = r"""
import json, os, sys, time
directory = sys.argv[1]
made = []
for line in sys.stdin:  # one change at each line the driver sends, once it is watching
    kind, i = line.split()
    if kind == "new":
        tmp = os.path.join(directory, f".new{i}.tmp")
        with open(tmp, "w") as f:
            f.write("x")
        os.rename(tmp, os.path.join(directory, f"new{i}"))
    elif kind == "grow":
        with open(os.path.join(directory, "grow"), "a") as f:
            f.write("x")
    else:
        os.utime(os.path.join(directory, "touch"), (int(i), int(i)))
    made.append(time.time())
print(json.dumps(made))
"""


def lag_seconds(count: int) -> dict[str, list[float]]:
    """How long after the node's client (slurmd's mount namespace, entered with nsenter) made
    a change the driver's client shows it: a renamed-in name to a stat and to a listing, a
    file's new size and a new mtime (a heartbeat) to a stat. The driver asks for a change
    (a line to the node's helper), then polls without pause until it shows."""
    with open(SLURMD_PID) as f:
        node = f.read().strip()
    directory = tempfile.mkdtemp(prefix="pp-bench-lag-", dir=GLUSTER)
    grow, touch = os.path.join(directory, "grow"), os.path.join(directory, "touch")
    shown: dict[str, Callable[[int], bool]] = {
        "stat": lambda i: os.path.exists(os.path.join(directory, f"new{i}")),
        "listing": lambda i: f"new{i}" in os.listdir(directory),
        "grow": lambda i: os.stat(grow).st_size > i,
        "touch": lambda i: os.stat(touch).st_mtime == 1000 + i,
    }
    asks = {"stat": "new", "listing": "new", "grow": "grow", "touch": "touch"}
    try:
        open(grow, "w").close()
        open(touch, "w").close()
        helper = subprocess.Popen(["nsenter", "-t", node, "-m", sys.executable, "-c", _NODE_SIDE,
                                   directory], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        seen: dict[str, list[float]] = {kind: [] for kind in shown}
        order = []
        for i in range(count):
            for kind, visible in shown.items():
                number = count + i if kind == "listing" else i  # a name no stat looked up
                helper.stdin.write(f"{asks[kind]} {1000 + number if kind == 'touch' else number}\n")
                helper.stdin.flush()
                deadline = time.monotonic() + 30
                while not visible(number) and time.monotonic() < deadline:
                    pass
                seen[kind].append(time.time())
                order.append(kind)
        made = json.loads(helper.communicate(timeout=60)[0])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lags: dict[str, list[float]] = {kind: [] for kind in shown}
    counters = collections.Counter()
    for kind, made_at in zip(order, made):
        lags[kind].append(max(0.0, seen[kind][counters[kind]] - made_at))
        counters[kind] += 1
    return lags


def _lag_rows(quick: bool) -> list[Row]:
    if not os.path.exists(SLURMD_PID) or shutil.which("nsenter") is None:
        return skipped("filesystem lag", "no slurmd mount namespace to act as the node client")
    lags = lag_seconds(10 if quick else 100)
    labels = {"stat": "a new name, to a stat", "listing": "a new name, to a listing",
              "grow": "a file's new size, to a stat", "touch": "a new mtime, to a stat"}
    out = []
    for kind, values in lags.items():
        values.sort()
        median, worst = values[len(values) // 2], values[-1]
        out.append((f"GlusterFS, node client -> driver client: {labels[kind]}",
                    f"median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms "
                    f"({len(values)} changes)", "<= filesystem_lag (3 s)", verdict(worst <= 3.0)))
    return out


def _slurm_rows(quick: bool) -> list[Row]:
    from bench.cluster import availability

    reason = availability("slurm")
    if reason is not None:
        return skipped("SLURM on GlusterFS", reason)
    n = 50 if quick else 200
    out = []
    for mode in ("array", "workers"):
        parent = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=GLUSTER)
        try:
            pool = pp.SlurmArrayPool(mode=mode, progress=False, polling_interval=0.3,
                                     work_dir=os.path.join(parent, "w"))
            start = time.perf_counter()
            assert pool.map(abs, range(n), chunksize=1) == list(range(n))
            seconds = time.perf_counter() - start
        finally:
            shutil.rmtree(parent, ignore_errors=True)
        out.append((f"SLURM, {n} one-task chunks, {mode} mode, work_dir on GlusterFS (jobs "
                    f"through the second client)", f"{seconds:.2f} s, "
                    f"{seconds / n * 1000:.0f} ms a chunk", "-", "-"))
    return out


def rows(quick: bool) -> list[Row]:
    reason = gluster_absent()
    if reason is not None:
        return skipped("filesystems", reason)
    return _local_rows(quick) + _lag_rows(quick) + _slurm_rows(quick)


if __name__ == "__main__":
    if sys.argv[1:2] == ["trace"]:
        one_map(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        for row in rows("--quick" in sys.argv):
            print(" | ".join(row), flush=True)
