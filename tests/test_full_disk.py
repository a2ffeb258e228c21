"""A full disk stops a map with an error that names it, keeps every finished result, and the
map resumes once space is freed (issue 21, item 11). The disk is a small tmpfs, which only
root can mount (CI runs as root)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root "
                                "(CI runs as root)")
RESULT_BYTES = 200_000


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def big_result(args):
    index, runs = args
    with open(runs, "a") as f:  # on another disk: which tasks ran, and how often
        f.write(f"{index}\n")
    return bytes([index % 256]) * RESULT_BYTES


def fill(path, leave):
    """Fill the disk of ``path`` up to ``leave`` bytes with one file."""
    stat = os.statvfs(path)
    size = max(0, stat.f_bavail * stat.f_frsize - leave)
    with open(path / "filler", "wb") as f:
        f.write(bytes(size))


@pytest.mark.parametrize("mode", ["workers", "array"])
def test_a_full_disk_says_so_keeps_finished_results_and_the_map_resumes(small_disk, tmp_path, mode):
    runs = tmp_path / "runs.txt"
    tasks = [(i, str(runs)) for i in range(30)]
    work_dir = small_disk / "w"
    fill(small_disk, leave=2_500_000)  # room for about half of the results and the map's files
    pool = pp.LocalPool(2, mode=mode, work_dir=str(work_dir), progress=False,
                        polling_interval=0.2)
    with pytest.raises(pp.WorkDirFullError, match="No space left on device") as info:
        pool.map(big_result, tasks, chunksize=1)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno in (errno.ENOSPC, errno.EDQUOT)
    assert str(work_dir) in str(info.value)
    stored = WorkDir(str(work_dir)).finished_chunks()  # chunksize 1: chunk i is task i
    assert stored, "no result fit on the disk: the test's filler left too little room"

    os.unlink(small_disk / "filler")
    results = pp.LocalPool(2, mode=mode, work_dir=str(work_dir), progress=False,
                           polling_interval=0.2).map(big_result, tasks, chunksize=1)
    assert results == [bytes([i]) * RESULT_BYTES for i in range(30)]
    counts = {}
    for index in map(int, runs.read_text().split()):
        counts[index] = counts.get(index, 0) + 1
    assert all(counts[chunk] == 1 for chunk in stored)  # kept, never computed again
