"""LocalPool's fork server reads each map's manifest and tasks once for the chunks it forks, and
commits their results into one log of its own (forkmaps.py): on a networked filesystem a
chunk that did both itself cost ~11 round trips to the server. What it holds must never be a
map other than the one the work_dir holds now, and must be let go of before the driver
removes the work_dir (on NFS an open file keeps its directory from being removed)."""
from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import resultlog
from poolparty_raster.names import loose_name
from poolparty_raster.schedulers import forkserver
from poolparty_raster.schedulers.forkmaps import HeldMaps
from poolparty_raster.workdir import WorkDir

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="LocalPool forks chunks through its server on Linux only")


def prepared(path: Path, func, tasks) -> str:
    """A work_dir that holds a finished map of ``func`` over ``tasks``, one task a chunk."""
    with pp.LocalPool(1, mode="array", progress=False, work_dir=str(path),
                      keep_work_dir=True) as pool:
        assert pool.map(func, tasks, chunksize=1) == [func(t) for t in tasks]
    return str(path)


def test_the_server_reads_a_map_once_and_again_only_once_it_changed(tmp_path):
    work_dir = prepared(tmp_path / "w", abs, [-1, -2, -3])
    maps = HeldMaps()
    held = maps.refresh(work_dir)
    assert held.manifest == WorkDir(work_dir).read_manifest()
    assert cloudpickle.loads(held.tasks.read("chunks/000002.pkl")) == [-3]
    assert maps.refresh(work_dir) is held  # nothing changed: nothing read again

    shutil.rmtree(work_dir)
    prepared(tmp_path / "w", str, [7, 8])  # another map in a work_dir of the same path
    again = maps.refresh(work_dir)
    assert again is not held
    assert again.manifest.num_tasks == 2
    assert cloudpickle.loads(again.tasks.read("chunks/000001.pkl")) == [8]


def test_nothing_is_held_of_a_work_dir_the_server_should_not_read(tmp_path):
    work_dir = prepared(tmp_path / "w", abs, [1, 2])
    maps = HeldMaps()
    os.chmod(work_dir, 0o770)  # writable by the group: nothing is read from it
    assert maps.refresh(work_dir) is None
    os.chmod(work_dir, 0o700)
    os.rename(os.path.join(work_dir, "tasks.zip"), tmp_path / "elsewhere.zip")
    os.symlink(tmp_path / "elsewhere.zip", os.path.join(work_dir, "tasks.zip"))
    assert maps.refresh(work_dir) is None  # never read through a link
    os.unlink(os.path.join(work_dir, "tasks.zip"))
    assert maps.refresh(work_dir) is None  # no map (a chunk says so itself)


def test_a_committed_result_is_a_link_to_the_servers_log_and_outlives_it(tmp_path):
    work_dir = prepared(tmp_path / "w", abs, [1, 2])
    maps = HeldMaps()
    maps.refresh(work_dir)
    maps.commit(work_dir, 0, b"first")
    maps.commit(work_dir, 1, b"second")
    logs = [p for p in os.listdir(work_dir) if resultlog.is_log_name(p)]
    assert len(logs) == 1  # one log for both
    result = os.path.join(work_dir, loose_name(1, "result"))
    assert os.stat(result).st_ino == os.stat(os.path.join(work_dir, logs[0])).st_ino
    maps.forget(work_dir)  # the map ended: the log's own name goes, its results stay
    assert not [p for p in os.listdir(work_dir) if resultlog.is_log_name(p)]
    reader = WorkDir(work_dir)
    reader.scan()
    assert reader.read_output(0, "result") == b"first"
    assert reader.read_output(1, "result") == b"second"
    reader.close()


def test_a_result_for_a_map_the_server_no_longer_holds_is_a_file_of_its_own(tmp_path):
    work_dir = prepared(tmp_path / "w", abs, [1])
    HeldMaps().commit(work_dir, 0, b"late")  # a duplicate that ran on after its map ended
    assert Path(work_dir, loose_name(0, "result")).read_bytes() == b"late"
    assert not [p for p in os.listdir(work_dir) if resultlog.is_log_name(p)]


def server_files(server: forkserver.ForkServer, under: str) -> list[str]:
    """What the fork server process has open under ``under``."""
    fds = f"/proc/{server._process.pid}/fd"
    return [target for target in (os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds))
            if target.startswith(under)]


def test_the_server_lets_go_of_a_map_before_the_driver_removes_its_work_dir(tmp_path):
    work_dir = str(tmp_path / "w")
    with pp.LocalPool(2, mode="array", progress=False, work_dir=work_dir) as pool:
        results = pool.imap(abs, range(-6, 0), chunksize=1)
        assert next(results) == 6
        server = forkserver.shared(sys.executable)
        # Mid-map the server holds its result log open, and no other file of the work_dir.
        assert [os.path.basename(p).split(".")[0] for p in server_files(server, work_dir)] == \
               ["results"]
        assert list(results) == [5, 4, 3, 2, 1]
        assert server_files(server, work_dir) == []
    assert not os.path.exists(work_dir)  # removed whole: nothing held kept it


def test_where_the_filesystem_has_no_hard_links_a_result_is_a_file_of_its_own(tmp_path,
                                                                              monkeypatch):
    work_dir = prepared(tmp_path / "w", abs, [1, 2])
    maps = HeldMaps()
    maps.refresh(work_dir)

    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", refused)  # as on a filesystem without hard links
    maps.commit(work_dir, 1, b"plain")
    assert Path(work_dir, loose_name(1, "result")).read_bytes() == b"plain"
    maps.forget(work_dir)
    assert not [p for p in os.listdir(work_dir) if resultlog.is_log_name(p)]


def test_the_server_lets_go_of_a_map_the_caller_abandoned(tmp_path):
    work_dir = str(tmp_path / "w")
    pool = pp.LocalPool(2, mode="array", progress=False, work_dir=work_dir)
    results = pool.imap(abs, [-1, -2, *[-3] * 40], chunksize=1)
    assert next(results) == 1
    server = forkserver.shared(sys.executable)
    pool.terminate()  # the map ends unfinished: its work_dir is kept, with its results
    assert server_files(server, work_dir) == []
    assert os.path.isdir(work_dir)
