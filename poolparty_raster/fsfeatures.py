"""What the work_dir protocol asks of its filesystem, checked in the work_dir at the start of a
map (docs/shared-filesystems.md says which rule needs which feature):

- ``O_CREAT | O_EXCL`` refuses a name that exists: the mark, claims where there are no hard
  links, result logs, badges. Without it two workers could run one chunk: a map fails.
- ``flock``: the driver holds driver.lock for the whole map (a second driver is refused, a
  worker stops claiming once its driver is gone). Lustre mounted without ``-o flock``
  answers ENOSYS: a map fails, naming the mount option, rather than fail later inside the
  lock library with no hint.
- hard links: claims and workers mode's results are links; without them (EPERM, ENOTSUP,
  EXDEV, ENOSYS) claims are ``O_EXCL`` files and results files of their own, which
  claims.py and resultlog.py switch to by themselves. Reported, not refused.

Locks that reach no further than the client (Lustre ``localflock``, NFS ``local_lock=flock``
or ``nolock``) cannot be told from one process: they are named from the mount options, with a
warning. Rename atomicity and close-to-open consistency cannot be probed at all.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from poolparty_raster.errors import PoolPartyError
from poolparty_raster.names import FEATURES_PROBE_NAME

# What a mount's options say about how far its locks reach (filesystem type, option):
# flock succeeds there, but another node does not see the lock.
LOCAL_ONLY_LOCKS = {("lustre", "localflock"), ("nfs", "nolock"), ("nfs4", "nolock"),
                    ("nfs", "local_lock=flock"), ("nfs4", "local_lock=flock"),
                    ("nfs", "local_lock=all"), ("nfs4", "local_lock=all")}
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


class FilesystemFeatureError(PoolPartyError):
    """The work_dir's filesystem lacks a feature the protocol needs; the message names the
    mount option (or other setting) that provides it."""


@dataclass(frozen=True)
class FilesystemFeatures:
    filesystem: str        # the mount's type, as /proc/self/mountinfo has it ("" if unknown)
    mount_options: str
    hard_links: bool
    exclusive_create: bool
    flock: bool


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str]:
    """(filesystem type, mount and superblock options) of the mount that holds ``path``:
    the longest mount point that is a prefix of its real path. ("", "") where there is no
    mountinfo (not Linux)."""
    real = os.path.realpath(path)
    best, found = -1, ("", "")
    try:
        with open(mountinfo) as f:
            lines = f.readlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        mount_point = fields[4].replace("\\040", " ")
        dash = fields.index("-")
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > best:
            options = ",".join(filter(None, (fields[5], fields[dash + 3] if
                                             len(fields) > dash + 3 else "")))
            best, found = len(mount_point), (fields[dash + 1], options)
    return found


def probe_features(directory: str, flock: Callable[[int, int], None] = fcntl.flock,
                   link: Callable[[str, str], None] = os.link) -> FilesystemFeatures:
    """Try each feature on a file of the protocol's temporary names in ``directory`` (a
    work_dir: a file left by a kill here is removed with it), and remove what it made."""
    filesystem, options = mount_of(directory)
    fd, path = tempfile.mkstemp(prefix=f".{FEATURES_PROBE_NAME}.", suffix=".tmp", dir=directory)
    linked = path[:-len(".tmp")] + "-link.tmp"  # a temporary name of the same stem
    try:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            exclusive_create = False
        except FileExistsError:
            exclusive_create = True
        try:
            link(path, linked)
            hard_links = True
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            hard_links = False
        try:
            flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flock(fd, fcntl.LOCK_UN)
            has_flock = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            has_flock = False
    finally:
        os.close(fd)
        for name in (linked, path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    return FilesystemFeatures(filesystem, options, hard_links, exclusive_create, has_flock)


def check_filesystem(directory: str, probe: Callable[[str], FilesystemFeatures] = probe_features
                     ) -> FilesystemFeatures:
    """The features of ``directory``'s filesystem; FilesystemFeatureError where the protocol
    cannot run on it, a warning where its locks may not reach the nodes."""
    found = probe(directory)
    where = f"{directory} ({found.filesystem or 'unknown filesystem'})"
    if not found.flock:
        raise FilesystemFeatureError(
            f"the work_dir {where} refuses flock(), which the driver's lock needs. On Lustre, "
            f"mount with -o flock (localflock is not enough: the nodes must see the driver's "
            f"lock); on NFS, run the lock service (rpc.statd / lockd) instead of mounting with "
            f"nolock; on BeeGFS set tuneUseGlobalFileLocks. Or give work_dir= on a filesystem "
            f"with coherent locks.")
    if not found.exclusive_create:
        raise FilesystemFeatureError(
            f"the work_dir {where} does not refuse O_EXCL creation of a name that exists, on "
            f"which claims and the work_dir's mark rely (NFS before version 3 cannot do it). "
            f"Give work_dir= on another filesystem.")
    base = found.filesystem.split(".")[-1] if found.filesystem.startswith("fuse.") else found.filesystem
    local_only = [option for option in found.mount_options.split(",")
                  if (base, option) in LOCAL_ONLY_LOCKS]
    if local_only:
        warnings.warn(f"the work_dir {where} is mounted with {','.join(local_only)}: its locks "
                      f"do not reach other nodes, so a second driver on another host is not "
                      f"refused, and workers cannot tell that their driver is gone (mount with "
                      f"-o flock on Lustre; without nolock/local_lock on NFS)", stacklevel=2)
    return found
