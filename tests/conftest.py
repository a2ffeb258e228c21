"""Shared fixtures: the backends every contract test runs on.

BACKENDS maps a name to the fixture that provides its scheduler (a dummy queue on PATH, or a
check that a real one answers) and its pool constructor. Every backend of the registry that
names a dummy joins it on its own, in its default mode and in workers mode (and, where the
backend has one, with one job per chunk); the real-scheduler and faulty entries are listed
here. Real-scheduler backends skip with the reason when absent, and fail instead when
POOLPARTY_REQUIRE_REAL=1 (CI sets it).

Tests of the whole chain (submission, polling, deaths, resubmission, resume, the work_dir) run
on every backend. Tests marked ``front`` check the multiprocessing-compatible front (pools/base.py,
the worker's pickling), which is the same code whatever runs the chunks: they run on
FRONT_BACKENDS, one of each kind (in-process, local, dummy, both real schedulers).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

import poolparty_raster as pp
from poolparty_raster.registry import BACKENDS as REGISTERED_BACKENDS
from poolparty_raster.registry import Backend

# What the registry does not say about a backend's dummy: the options that point a pool at
# it (the AWS dummies are clients handed to the pool, not commands on PATH), and the pool
# that runs one job per chunk, for the backends that have one beside their arrays.
DUMMY_POOL_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "ecs": lambda: __import__("dummy_queues.aws").aws.pool_options("ecs"),
    "awsbatch": lambda: __import__("dummy_queues.aws").aws.pool_options("batch"),
}
ONE_JOB_PER_CHUNK: dict[str, Callable[..., Any]] = {
    "slurm": lambda **o: pp.SlurmPool(**o),
    "sge": lambda **o: pp.SgePool(array=False, **o),
}


def dummy_backends(backend: Backend) -> dict[str, tuple[str, Callable[..., Any]]]:
    """The entries of BACKENDS that run ``backend``'s usual pool on its dummy: named
    <dummy>, <dummy>_workers, and <dummy>_array, <dummy>_jobs where it has both."""
    options = DUMMY_POOL_OPTIONS.get(backend.name, dict)

    def default(**o):
        return getattr(pp, backend.pool_class)(**options(), **o)

    def workers(**o):
        return default(mode="workers", max_workers=3, **o)

    if backend.name not in ONE_JOB_PER_CHUNK:
        return {backend.dummy: (backend.dummy, default),
                f"{backend.dummy}_workers": (backend.dummy, workers)}
    return {f"{backend.dummy}_array": (backend.dummy, default),
            f"{backend.dummy}_jobs": (backend.dummy, ONE_JOB_PER_CHUNK[backend.name]),
            f"{backend.dummy}_workers": (backend.dummy, workers)}


BACKENDS = {
    "serial": (None, lambda **o: pp.SerialPool()),
    "local": (None, lambda **o: pp.LocalPool(**{"processes": 2, "mode": "array", **o})),
    "local_workers": (None, lambda **o: pp.LocalPool(**{"processes": 2, "mode": "workers", **o})),
    **{name: entry for backend in REGISTERED_BACKENDS if backend.dummy is not None
       for name, entry in dummy_backends(backend).items()},
    # The same fakes with their commands misbehaving at the start of every test: the chain
    # must absorb it without a visible difference.
    "faulty_slurm_array": ("faulty_slurm", lambda **o: pp.SlurmArrayPool(**o)),
    "faulty_sge_array": ("faulty_sge", lambda **o: pp.SgePool(**o)),
    "faulty_pbs": ("faulty_pbs", lambda **o: pp.PbsPool(**o)),
    "faulty_lsf": ("faulty_lsf", lambda **o: pp.LsfPool(**o)),
    "faulty_htcondor": ("faulty_htcondor", lambda **o: pp.HTCondorPool(**o)),
    "real_slurm": ("real_slurm", lambda **o: pp.SlurmArrayPool(**o)),
    "real_sge": ("real_sge", lambda **o: pp.SgePool(**o)),
    "real_slurm_workers": ("real_slurm", lambda **o: pp.SlurmArrayPool(mode="workers", max_workers=3, **o)),
    "real_sge_workers": ("real_sge", lambda **o: pp.SgePool(mode="workers", max_workers=3, **o)),
    # The real SLURM with the work_dirs on GlusterFS, its jobs behind a second client.
    "gluster_slurm": ("gluster_slurm", lambda **o: pp.SlurmArrayPool(**o)),
    "gluster_slurm_workers": ("gluster_slurm", lambda **o: pp.SlurmArrayPool(mode="workers", max_workers=3, **o)),
}


@functools.lru_cache(maxsize=None)
def probe_real(kind: str) -> str | None:
    """None when a real scheduler of this kind answers, else why not."""
    command = {"slurm": ["sinfo", "--noheader", "--format=%t"], "sge": ["qstat", "-xml"]}[kind]
    if shutil.which(command[0]) is None:
        return f"`{command[0]}` is not on PATH"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command)}` timed out"
    if done.returncode != 0:
        return f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.strip()[:200]}"
    # "comp": a node still completing the last test's job is up, too.
    if kind == "slurm" and not ({"idle", "mix", "alloc", "comp"} & set(done.stdout.split())):
        return f"no SLURM node is up (sinfo says {done.stdout.split()})"
    return None


def require_real(kind: str) -> None:
    why = probe_real(kind)
    if why is None:
        return
    if os.environ.get("POOLPARTY_REQUIRE_REAL") == "1":
        pytest.fail(f"a real {kind} is required here (POOLPARTY_REQUIRE_REAL=1), but {why}. "
                    f"Run `sudo bash ci/bringup-all.sh` first.")
    pytest.skip(f"no real {kind}: {why} (run `sudo bash ci/bringup-all.sh` to start one)")


COMMAND_FAULTS = {  # scheduler: (submission command, poll command)
    "slurm": ("sbatch", "squeue"), "sge": ("qsub", "qstat"), "pbs": ("qsub", "qstat"),
    "lsf": ("bsub", "bjobs"), "htcondor": ("condor_submit", "condor_q")}


@pytest.fixture(autouse=True)
def _work_dirs_in_tmp_path(tmp_path, monkeypatch):
    """Every test's default work_dirs go under its tmp_path: a map that fails on purpose keeps
    its work_dir, which must not pile up in the machine's temporary directory."""
    monkeypatch.setenv("POOLPARTY_RASTER_WORK_DIR_ROOT", str(tmp_path / "work"))


def _faulty(queue):
    submit, poll = COMMAND_FAULTS[queue.scheduler]
    queue.inject_command_failure(submit, times=1, mode="lose_id")
    queue.inject_command_failure(poll, times=2, mode="fail")
    return queue


@pytest.fixture
def faulty_slurm(dummy_slurm):
    return _faulty(dummy_slurm)


@pytest.fixture
def faulty_sge(dummy_sge):
    return _faulty(dummy_sge)


@pytest.fixture
def faulty_pbs(dummy_pbs):
    return _faulty(dummy_pbs)


@pytest.fixture
def faulty_lsf(dummy_lsf):
    return _faulty(dummy_lsf)


@pytest.fixture
def faulty_htcondor(dummy_htcondor):
    return _faulty(dummy_htcondor)


@pytest.fixture
def real_slurm():
    require_real("slurm")


@pytest.fixture
def real_sge():
    require_real("sge")


GLUSTER_DIR = os.environ.get("GLUSTER_CI_DIR", "/srv/poolparty-gluster/shared")


def gluster_absent() -> str | None:
    """None when GLUSTER_DIR is a GlusterFS client and SLURM's jobs see it through another
    (ci/gluster/bringup.sh), else why not."""
    with open("/proc/self/mounts") as f:
        mounts = {fields[1]: fields[2] for fields in map(str.split, f)}
    if mounts.get(GLUSTER_DIR) != "fuse.glusterfs":
        return f"{GLUSTER_DIR} is not a GlusterFS mount"
    try:
        with open("/run/slurmd.pid") as f:
            pid = f.read().strip()
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            return None
    except OSError:
        pass
    return "slurmd does not run in a mount namespace of its own"


@pytest.fixture
def gluster_slurm(real_slurm, tmp_path):
    """The real SLURM, with this test's work_dirs on the GlusterFS volume: tmp_path / "work"
    (where work_dirs go) leads to a directory of the test's there."""
    why = gluster_absent()
    if why is not None:
        if os.environ.get("POOLPARTY_REQUIRE_REAL") == "1":
            pytest.fail(f"GlusterFS is required here (POOLPARTY_REQUIRE_REAL=1), but {why}. "
                        f"Run `sudo bash ci/bringup-all.sh` first.")
        pytest.skip(f"no GlusterFS: {why} (run `sudo bash ci/bringup-all.sh`)")
    root = tempfile.mkdtemp(prefix="test-", dir=GLUSTER_DIR)
    (tmp_path / "work").symlink_to(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


FRONT_BACKENDS = ["serial", "local", "local_workers", "dummy_slurm_array", "dummy_sge_array",
                  "real_slurm", "real_sge"]


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.definition.get_closest_marker("backends")
        front = metafunc.definition.get_closest_marker("front") is not None
        names = chosen.args[0] if chosen else FRONT_BACKENDS if front else list(BACKENDS)
        metafunc.parametrize("backend", names)


def pytest_configure(config):
    config.addinivalue_line("markers", "front: a test of the pool's front, run on FRONT_BACKENDS")
    config.addinivalue_line("markers", "backends(names): run on these BACKENDS only")


@pytest.fixture
def make_pool(backend, request):
    """``make_pool(**options)`` builds a pool of the parametrised backend with its work_dirs
    under tmp_path (cluster backends get their dummy queue, or a real scheduler)."""
    fixture, construct = BACKENDS[backend]
    if fixture is not None:
        request.getfixturevalue(fixture)
    pools = []

    def factory(**options):
        if backend != "serial":
            options.setdefault("polling_interval", 0.5)
            options.setdefault("progress", False)
        if fixture is not None:
            options.setdefault("filesystem_lag", 0.5)
        pool = construct(**options)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.terminate()
