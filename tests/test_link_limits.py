"""Hard links where a file takes only a few: GlusterFS keeps an extended attribute per link on
its brick's inode, and an ext4 brick holds about 40 in a block, so the next link fails with
ENOSPC while the disk has room. Claims and result logs start a new file then; a real full disk
still raises. And a worker that the work_dir fails says why (issue 28, found on GlusterFS)."""
from __future__ import annotations

import errno
import os
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import resultlog
from poolparty_raster.claims import Claims
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])

LINKS_PER_FILE = 3


@pytest.fixture
def few_links(monkeypatch):
    """os.link as on a GlusterFS brick: a source takes LINKS_PER_FILE links, then ENOSPC."""
    real_link, made = os.link, {}

    def link(source, destination, *args, **kwargs):
        inode = os.stat(source).st_ino
        if made.get(inode, 0) >= LINKS_PER_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", destination)
        real_link(source, destination, *args, **kwargs)
        made[inode] = made.get(inode, 0) + 1
    monkeypatch.setattr(os, "link", link)


def test_claims_go_on_with_a_new_badge_when_one_takes_no_more_links(tmp_path, few_links):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    work_dir.claims.create()
    claims = Claims(work_dir.claims.path)
    taken = [claims.claim_next(10, "0 host 1 token", set()) for _ in range(10)]
    assert [chunk for chunk, _ in taken] == list(range(10))
    holders = work_dir.claims.held()
    assert sorted(holders) == list(range(10))
    assert {holder for holder, _ in holders.values()} == {"0 host 1 token"}


def test_results_go_on_into_a_new_log_when_one_takes_no_more_links(tmp_path, few_links):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()
    log = resultlog.ResultLog(work_dir.path)
    for chunk in range(10):
        work_dir.write_result(chunk, f"result {chunk}".encode(), log)
    assert [work_dir.read_output(chunk, "result") for chunk in range(10)] == [
        f"result {chunk}".encode() for chunk in range(10)]
    assert log.hard_links  # still linking, through new logs


def test_a_full_disk_is_not_taken_for_a_link_limit(tmp_path, monkeypatch):
    work_dir = WorkDir(str(tmp_path / "w"))
    work_dir.create()

    def full(source, destination, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", destination)
    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError) as info:
        work_dir.write_result(0, b"value", resultlog.ResultLog(work_dir.path))
    assert info.value.errno == errno.ENOSPC


def break_linking(x):
    """A task that leaves its worker unable to link: the next result cannot be stored."""
    def refuse(source, destination, *args, **kwargs):
        raise OSError(errno.EIO, "injected link failure", destination)
    os.link = refuse
    return x


def test_a_worker_the_work_dir_fails_says_why_in_the_maps_error(tmp_path):
    pool = pp.LocalPool(1, mode="workers", work_dir=str(tmp_path / "w"), progress=False,
                        polling_interval=0.2, max_num_resubmissions=1)
    with pytest.raises(pp.TaskLostError, match="injected link failure"):
        pool.map(break_linking, range(3), chunksize=1)
