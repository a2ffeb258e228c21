"""Which directories are this package's to write and delete: a work_dir is known by the mark
the package writes in it before anything else, and used only where no other user can write.

The rules, checked on the driver, in the CLI and on the node before anything is read:
- the work_dir's own path is not a symbolic link (``lstat``: nothing is followed out of it);
- it is a directory owned by this user (root's too: root never works in a directory another
  user owns) and writable by no one else: a file planted by another user would be unpickled
  (ssh's StrictModes applies the same rule to ``~/.ssh``);
- it holds the mark ``poolparty_raster.mark`` (a format number and a random id), or is empty,
  and is then adopted by writing the mark. A directory that is neither is not ours: it is
  refused before anything in it changes.

Removal deletes only the names the work_dir protocol gives its files (names.is_protocol_name),
never through a symbolic link, and the directory itself only when this package created it and
nothing else is left in it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
import warnings
from dataclasses import dataclass

from poolparty_raster.errors import UnsafeWorkDirError, WorkDirMismatchError
from poolparty_raster.files import atomic_write
from poolparty_raster.names import MARK_NAME, is_protocol_name

MARK_FORMAT = 1


@dataclass(frozen=True)
class Mark:
    """The content of a work_dir's mark: ``id`` tells this work_dir from one made later at
    the same path; ``created_dir``: the package made the directory (and may remove it);
    ``adopted_mode``: the mode of an empty directory of the user's that was made private
    (0700) to serve, given back when the work_dir's files are removed."""

    id: str
    created_dir: bool
    adopted_mode: int | None = None


def check_private(path: str, *, worker: bool = False) -> os.stat_result:
    """``lstat`` of the work_dir, refusing a symbolic link, a non-directory, another user's
    directory and one that group or others may write. ``worker``: the check a job makes on
    its node, where root (a container) may read the work_dir of the user who submitted it."""
    info = os.lstat(path)  # FileNotFoundError: the caller's to read
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeWorkDirError(
            f"work_dir {path} is a symbolic link (to {os.readlink(path)!r}); poolparty_raster "
            f"never works through one. Give the directory's real path ({os.path.realpath(path)}).")
    if not stat.S_ISDIR(info.st_mode):
        raise WorkDirMismatchError(f"work_dir {path} exists and is not a directory. Give a new "
                                   f"or empty directory.")
    uid = os.geteuid()
    if info.st_uid != uid and not (worker and uid == 0):
        raise UnsafeWorkDirError(
            f"work_dir {path} is owned by uid {info.st_uid}, not by this user (uid {uid}): "
            f"its owner could plant files that this process would load. Use a directory of "
            f"your own.")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeWorkDirError(
            f"work_dir {path} is writable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): another user could plant files that this "
            f"process would load. Run `chmod go-w {path}` if it is yours, or use another "
            f"directory.")
    return info


def read_mark(path: str) -> Mark | None:
    """The mark of a directory that passed check_private; None where it has none. A mark that
    is not one of ours (unreadable, another format) is refused."""
    mark_path = os.path.join(path, MARK_NAME)
    try:
        fd = os.open(mark_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link under the mark's name
        raise WorkDirMismatchError(f"work_dir {path}: its {MARK_NAME} cannot be read ({exc}); "
                                   f"poolparty_raster did not write it.") from exc
    with os.fdopen(fd, "rb") as f:
        raw = f.read(4096)
    try:
        content = json.loads(raw)
        if content["format"] != MARK_FORMAT:
            raise WorkDirMismatchError(
                f"work_dir {path} was made by a version of poolparty_raster whose work_dir "
                f"format is {content['format']} (this one reads {MARK_FORMAT}). Finish the map "
                f"with that version, or use a new work_dir.")
        return Mark(str(content["id"]), bool(content["created_dir"]), content.get("adopted_mode"))
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkDirMismatchError(f"work_dir {path}: {MARK_NAME} is not a mark poolparty_raster "
                                   f"wrote ({exc}). Use a new work_dir.") from exc


def inspect(path: str) -> Mark | None:
    """The mark of an existing work_dir of ours; None when ``path`` does not exist or is an
    empty directory (free to take). Anything else raises, and nothing is changed."""
    try:
        check_private(path)
    except FileNotFoundError:
        return None
    mark = read_mark(path)
    if mark is None:
        found = sorted(os.listdir(path))
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            earlier = (" A work_dir of a poolparty_raster version before 0.2 has no mark: finish "
                       "its map with that version." if "manifest.json" in found else "")
            raise WorkDirMismatchError(
                f"work_dir {path} is not empty and was not made by poolparty_raster (it holds "
                f"{shown}, and no {MARK_NAME}). Nothing in it was changed. Give a new or empty "
                f"directory.{earlier}")
    return mark


def take(path: str) -> Mark:
    """Make ``path`` a work_dir of ours, or check that it is one; returns its mark. The mark
    is the first thing written into a directory."""
    mark = inspect(path)
    if mark is not None:
        return mark
    created = False
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:  # an empty directory, as inspect() saw (or made meanwhile: checked)
        pass
    info = check_private(path)
    mode = stat.S_IMODE(info.st_mode)
    mark = Mark(uuid.uuid4().hex, created, None if created else mode)
    if mode != 0o700:  # a umask took bits away, or the user's empty directory is readable
        os.chmod(path, 0o700)
    body = json.dumps({"format": MARK_FORMAT, "id": mark.id, "created_dir": created,
                       "adopted_mode": mark.adopted_mode, "package": "poolparty_raster"}).encode()
    atomic_write(os.path.join(path, MARK_NAME), body)
    if not created and (foreign := [n for n in os.listdir(path) if n != MARK_NAME]):
        os.unlink(os.path.join(path, MARK_NAME))  # someone wrote into it as we took it
        os.chmod(path, mode)
        raise WorkDirMismatchError(f"work_dir {path} was being written by someone else "
                                   f"({', '.join(sorted(foreign)[:3])}). Give a new directory.")
    return mark


def remove(path: str, mark: Mark) -> bool:
    """Remove a work_dir's own files, and the directory if this package made it. Only after
    checking again that it is the same work_dir (its mark's id) and still private: between a
    map's start and its end, the path may have been replaced. What else is in it stays, the
    caller is warned, and False returned."""
    try:
        check_private(path)
    except FileNotFoundError:
        return True
    if read_mark(path) != mark:
        warnings.warn(f"poolparty_raster: {path} is no longer the work_dir this map made (its "
                      f"{MARK_NAME} changed); nothing was removed", RuntimeWarning, stacklevel=2)
        return False
    foreign = []
    with os.scandir(path) as entries:  # removed as read: a million names are never a list
        for entry in entries:
            if entry.name == MARK_NAME:
                continue
            if not is_protocol_name(entry.name):
                foreign.append(entry.name)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)  # claims/: never follows a link inside (fd-based)
            else:
                _unlink(entry.path)
    if foreign:
        warnings.warn(f"poolparty_raster: kept {path}: it holds files this package did not "
                      f"write ({', '.join(sorted(foreign)[:3])}); its own files were removed",
                      RuntimeWarning, stacklevel=2)
        return False
    _unlink(os.path.join(path, MARK_NAME))
    if mark.adopted_mode is not None:
        os.chmod(path, mark.adopted_mode)
    if mark.created_dir:
        try:
            os.rmdir(path)
        except OSError:  # something arrived meanwhile: it stays, with what arrived
            return False
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
