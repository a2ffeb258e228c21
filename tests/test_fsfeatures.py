"""The filesystem probe run at the start of a map: what it finds on a real local disk, and what
it says where a feature is missing (the missing call is substituted: Lustre without -o flock
answers ENOSYS to flock, some filesystems refuse hard links)."""
from __future__ import annotations

import errno
import os

import pytest

from poolparty_raster.fsfeatures import (FilesystemFeatureError, check_filesystem, mount_of,
                                         probe_features)
from poolparty_raster.names import is_protocol_name


def refuse(code):
    def call(*args):
        raise OSError(code, os.strerror(code))
    return call


def test_a_local_disk_has_every_feature_and_keeps_nothing_of_the_probe(tmp_path):
    found = check_filesystem(str(tmp_path))
    assert (found.hard_links, found.exclusive_create, found.flock) == (True, True, True)
    assert found.filesystem  # named from /proc/self/mountinfo
    assert os.listdir(tmp_path) == []


def test_flock_answering_enosys_fails_the_map_naming_the_mount_option(tmp_path):
    def lustre_without_flock(directory):
        return probe_features(directory, flock=refuse(errno.ENOSYS))
    with pytest.raises(FilesystemFeatureError, match="-o flock"):
        check_filesystem(str(tmp_path), probe=lustre_without_flock)
    assert os.listdir(tmp_path) == []


def test_no_hard_links_is_reported_not_refused(tmp_path):
    found = check_filesystem(str(tmp_path), probe=lambda d: probe_features(d, link=refuse(errno.EPERM)))
    assert not found.hard_links and found.flock
    assert os.listdir(tmp_path) == []


def test_an_unexpected_failure_of_the_probe_is_raised_as_it_is(tmp_path):
    with pytest.raises(OSError) as raised:
        probe_features(str(tmp_path), link=refuse(errno.ENOSPC))
    assert raised.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_probe_file_left_by_a_kill_is_a_protocol_name_that_removal_deletes(tmp_path):
    kept = []

    def killed_during_link(source, destination):
        kept.extend(os.path.basename(p) for p in (source, destination))
        raise OSError(errno.EINTR, "killed")
    with pytest.raises(OSError):
        probe_features(str(tmp_path), link=killed_during_link)
    assert kept and all(is_protocol_name(name) for name in kept)


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:51 / /lustre/scratch rw,relatime shared:40 - lustre 10.0.0.1@o2ib:/scratch rw,localflock
91 22 0:52 / /home rw,relatime shared:41 - nfs4 srv:/home rw,vers=4.2,local_lock=none
"""


def test_locks_that_stay_on_the_client_are_named_from_the_mount_options(tmp_path, monkeypatch):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert mount_of("/lustre/scratch/me/w", str(info)) == ("lustre", "rw,relatime,rw,localflock")
    assert mount_of("/home/me", str(info))[0] == "nfs4"
    assert mount_of("/lustrex", str(info))[0] == "ext4"  # a prefix of the name is no mount

    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.setattr("poolparty_raster.fsfeatures.mount_of",
                        lambda path: ("lustre", "rw,localflock"))
    with pytest.warns(UserWarning, match="localflock"):
        check_filesystem(str(work))


def test_a_map_whose_work_dir_refuses_flock_fails_before_anything_runs_and_leaves_nothing(
        tmp_path, monkeypatch):
    import functools

    import poolparty_raster as pp
    from poolparty_raster import mapping

    def lustre_without_flock(directory):
        return probe_features(directory, flock=refuse(errno.ENOSYS))
    monkeypatch.setattr(mapping, "check_filesystem",
                        functools.partial(check_filesystem, probe=lustre_without_flock))
    monkeypatch.setattr(mapping, "_PROBED_DEVICES", set())
    ran = tmp_path / "ran"
    with pp.LocalPool(1, work_dir=str(tmp_path / "map"), progress=False) as pool:
        with pytest.raises(FilesystemFeatureError, match="-o flock"):
            pool.map(ran.mkdir, [0o700])
    assert os.listdir(tmp_path) == []  # no work_dir left, and no task ran
