"""The work_dir on a networked filesystem as clusters have one: a GlusterFS volume that the driver
sees through one client and the real SLURM's jobs through another, at the same path
(ci/gluster/bringup.sh), so that every file crosses a network client's caches (issue 28)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import numpy as np
import pytest

import poolparty_raster as pp
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = {"progress": False, "polling_interval": 0.3}


@pytest.fixture
def gluster_root(gluster_slurm, monkeypatch):
    """The test's directory on the volume, as the driver sees it; new work_dirs go there."""
    monkeypatch.setenv("POOLPARTY_RASTER_WORK_DIR_ROOT", gluster_slurm)
    return gluster_slurm


def through_which_client(x):
    """The task's value, and the device its job sees the volume as: which FUSE client."""
    return x * x, os.stat(os.environ["POOLPARTY_RASTER_WORK_DIR_ROOT"]).st_dev


def test_jobs_see_the_work_dir_through_their_own_client(gluster_root):
    results = pp.SlurmArrayPool(**FAST).map(through_which_client, range(4), chunksize=1)
    assert [value for value, _ in results] == [0, 1, 4, 9]
    assert {device for _, device in results} != {os.stat(gluster_root).st_dev}


def raise_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x + 1


@pytest.mark.parametrize("mode", ["array", "workers"])
def test_a_map_returns_its_results_and_a_tasks_error(gluster_root, mode):
    pool = pp.SlurmArrayPool(mode=mode, max_workers=3, **FAST)
    assert pool.map(abs, range(-30, 0), chunksize=1) == list(range(30, 0, -1))
    with pytest.raises(ValueError, match="three"):
        pool.map(raise_on_three, range(6), chunksize=1)
    kept = [os.path.join(gluster_root, name) for name in os.listdir(gluster_root)]
    assert len(kept) == 1  # the failed map's work_dir, kept; the clean one removed
    assert WorkDir(kept[0]).finished_chunks() == set(range(6))


def count_run(args):
    x, runs = args
    with open(os.path.join(runs, f"{x}.{os.getpid()}"), "w"):
        pass
    # Chunk 10 holds its worker until another worker has run a chunk (a minute at most),
    # so that several take part however fast one worker alone would be.
    deadline = time.monotonic() + 60
    while x == 10 and time.monotonic() < deadline and \
            len({name.split(".")[1] for name in os.listdir(runs)}) < 2:
        time.sleep(0.01)  # polls the condition; the deadline bounds a failing test
    return x


def test_workers_claim_each_chunk_once_across_clients(gluster_root):
    runs_on_volume = os.path.join(gluster_root, "runs")
    os.mkdir(runs_on_volume, 0o700)
    pool = pp.SlurmArrayPool(mode="workers", max_workers=4, **FAST)
    tasks = [(x, runs_on_volume) for x in range(300)]
    assert pool.map(count_run, tasks, chunksize=1) == list(range(300))
    names = os.listdir(runs_on_volume)
    assert sorted(int(name.split(".")[0]) for name in names) == list(range(300))
    assert len({name.split(".")[1] for name in names}) > 1  # several workers took part


DRIVER = textwrap.dedent("""
    import json, sys, time
    import poolparty_raster as pp

    def slow_square(x):
        time.sleep(0.5)
        return x * x

    if __name__ == "__main__":
        work_dir, mode = sys.argv[1:]
        pool = pp.SlurmArrayPool(mode=mode, max_workers=3, work_dir=work_dir, keep_work_dir=True,
                                 progress=False, polling_interval=0.3)
        results = pool.map(slow_square, range(24), chunksize=1)
        with open(work_dir + ".json", "w") as f:
            json.dump(results, f)
""")


@pytest.mark.parametrize("mode", ["array", "workers"])
def test_a_killed_driver_resumes_from_the_volume(gluster_root, tmp_path, mode):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    work_dir = os.path.join(gluster_root, "w")
    driver = subprocess.Popen([sys.executable, str(script), work_dir, mode], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # killed once some results are stored
        if os.path.isdir(work_dir) and len(WorkDir(work_dir).finished_chunks()) >= 4:
            break
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = subprocess.run([sys.executable, str(script), work_dir, mode], cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0
    with open(work_dir + ".json") as f:
        assert json.load(f) == [x * x for x in range(24)]


def test_the_applier_writes_its_outputs_through_the_volume(gluster_root):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    from poolparty_raster import applier

    source = os.path.join(gluster_root, "in.tif")
    data = np.arange(600 * 500, dtype=np.int16).reshape(600, 500)
    with rasterio.open(source, "w", driver="GTiff", width=500, height=600, count=1,
                       dtype="int16", crs="EPSG:32755",
                       transform=from_origin(500000, 6000000, 30, 30)) as dst:
        dst.write(data, 1)

    def double(info, inputs, outputs):
        outputs.out = inputs.src * 2

    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.src = source
    outfiles.out = os.path.join(gluster_root, "out.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(128, 128)
    controls.setConcurrencyStyle(applier.ConcurrencyStyle(
        numComputeWorkers=3, computeWorkerKind=applier.CW_SLURM,
        computeWorkerExtraParams={"polling_interval": 0.3, "progress": False}))
    applier.apply(double, infiles, outfiles, controls=controls)
    with rasterio.open(outfiles.out) as src:
        assert np.array_equal(src.read(1), data * 2)


def test_the_volume_has_every_feature_the_protocol_needs(gluster_root):
    from poolparty_raster.fsfeatures import check_filesystem

    found = check_filesystem(gluster_root)
    assert found.filesystem == "fuse.glusterfs"
    assert (found.hard_links, found.exclusive_create, found.flock) == (True, True, True)
    assert os.listdir(gluster_root) == []
