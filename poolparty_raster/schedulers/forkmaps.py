"""What LocalPool's fork server holds of each map it runs chunks of, for the children it forks:
the script (compiled), the manifest (parsed), tasks.zip (in memory, up to HELD_TASKS_BYTES,
its index parsed) and the log where it commits their results.

On a networked filesystem every open, close, create and rename of a chunk's process is a round
trip to the server, and each costs the server's CPU too (GlusterFS: a file creation ~0.9 ms, an
open or a flush ~0.1 ms). An array-mode chunk that read its manifest and tasks itself and
committed its result as a file of its own cost ~11 of them. A child of the fork server reads
what the server read once per map (inherited memory, where an inherited descriptor would be
flushed to the server as each child exits), and sends its result to the server, which appends
it to one result log per work_dir and links the chunk's result name to it (resultlog.py): a
write and a link, unflushed, as the driver reads it through this machine's own client.

Before every fork the server checks that the work_dir is still private and the files' identity
(stats that its client answers from its cache: the driver writes the files through this
machine's own mount), so a map prepared again in the same work_dir is read again. It lets go
of a work_dir when the driver says the map ended (``forget``), before the driver removes it:
on NFS a file held open keeps its directory from being removed.
"""
from __future__ import annotations

import contextlib
import os
import stat
import types
from dataclasses import dataclass, field

from poolparty_raster import ownership
from poolparty_raster.errors import UnsafeWorkDirError, WorkDirMismatchError
from poolparty_raster.manifest import Manifest, read_manifest
from poolparty_raster.resultlog import ResultLog
from poolparty_raster.storedarchive import StoredArchive
from poolparty_raster.workdir import WorkDir

KEPT = 4  # work_dirs held at once: a pool's maps run one after another, a few at once at most
# An array-mode child reads a larger tasks.zip itself (what is held is the server's memory,
# shared with the children it forks).
HELD_TASKS_BYTES = 128 << 20


class Scripts:
    """The emitted scripts, compiled once each: a child that opened and compiled its script
    would cost every chunk three opens of it (runpy's), each a round trip to the server where
    the work_dir is on a networked filesystem. One ``lstat`` a chunk, here, tells a script that
    the driver wrote again (a new file, renamed over the old: another inode); the driver writes
    it through this machine's own client, so no cache hides the change from this server."""

    KEPT = 8  # scripts of recent pools; a pool's work_dir holds one

    def __init__(self) -> None:
        self._compiled: dict[str, tuple[tuple[int, ...], types.CodeType]] = {}

    def compiled(self, path: str) -> types.CodeType | None:
        """The script's code; None where it cannot be read or compiled now (the child runs it
        with runpy, which reports why in scheduler.log)."""
        try:
            key = _identity(path)
            kept = self._compiled.get(path)
            if kept is None or kept[0] != key:
                with open(path, "rb") as f:
                    kept = (key, compile(f.read(), path, "exec", dont_inherit=True))
                self._compiled.pop(path, None)
                self._compiled[path] = kept
                while len(self._compiled) > self.KEPT:
                    del self._compiled[next(iter(self._compiled))]
            return kept[1]
        except (OSError, SyntaxError, ValueError):
            return None


@dataclass
class HeldMap:
    """One work_dir's map as the server read it."""

    work_dir: str
    version: tuple[tuple[int, ...], tuple[int, ...]]  # manifest.json's and tasks.zip's identity
    manifest: Manifest
    tasks: StoredArchive | None  # in memory; None: workers mode, or too large
    results: ResultLog | None = field(default=None)  # created at the first result

    def release(self) -> None:
        """Drop tasks.zip's bytes, close the log and remove its own name (the results linked
        to it stay)."""
        if self.tasks is not None:
            self.tasks.close()
        if self.results is not None:
            with contextlib.suppress(OSError):
                self.results.close()
            self.results = None


class HeldMaps:
    """The server's side: the maps it holds, by work_dir path."""

    def __init__(self) -> None:
        self._held: dict[str, HeldMap] = {}

    def refresh(self, work_dir: str) -> HeldMap | None:
        """The work_dir's map, read again where its files changed; None where it cannot be
        held (no map, not private, not mappable): the child then reads the files itself,
        and says why where that fails."""
        held = self._held.get(work_dir)
        try:
            ownership.check_private(work_dir, worker=True)
            version = (_identity(os.path.join(work_dir, "manifest.json")),
                       _identity(os.path.join(work_dir, "tasks.zip")))
            if held is not None and held.version == version:
                return held
            self.forget(work_dir)
            held = _read(work_dir, version)
        except (OSError, ValueError, UnsafeWorkDirError, WorkDirMismatchError):
            self.forget(work_dir)
            return None
        if held is None:
            return None
        self._held[work_dir] = held
        while len(self._held) > KEPT:
            self.forget(next(iter(self._held)))
        return held

    def commit(self, work_dir: str, chunk: int, payload: bytes) -> None:
        """Commit a chunk's result as the chunk would have (WorkDir.write_result): a record in
        the work_dir's log and a link to it under the chunk's result name; a file of its own
        where the filesystem has no hard links, or where the map ended meanwhile (forget: a
        late duplicate's result). Raises OSError (a full disk) with nothing under the name."""
        held = self._held.get(work_dir)
        if held is not None and held.results is None:  # read by the driver, on this machine
            held.results = ResultLog(work_dir, readers_elsewhere=False)
        WorkDir(work_dir).write_result(chunk, payload, held.results if held else None)

    def forget(self, work_dir: str) -> None:
        """Hold nothing of the work_dir any more (its map ended, or changed)."""
        held = self._held.pop(work_dir, None)
        if held is not None:
            held.release()


def _identity(path: str) -> tuple[int, ...]:
    """Which file ``path`` is now; OSError for none, or anything but a regular file."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):  # nothing in a work_dir is read through a link
        raise OSError(f"{path} is not a regular file")
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size


def _read(work_dir: str, version: tuple[tuple[int, ...], tuple[int, ...]]) -> HeldMap | None:
    manifest = read_manifest(os.path.join(work_dir, "manifest.json"), work_dir)
    if manifest is None:
        return None
    # A worker (workers mode) opens tasks.zip once for all the chunks it runs.
    if manifest.mode != "array" or version[1][-1] > HELD_TASKS_BYTES:
        return HeldMap(work_dir, version, manifest, None)
    tasks = StoredArchive(os.path.join(work_dir, "tasks.zip"), prefix="chunks/", suffix=".pkl")
    try:
        tasks.keep_in_memory()
    except BaseException:
        tasks.close()
        raise
    return HeldMap(work_dir, version, manifest, tasks)


# In a child of the server: the map of the work_dir it was forked to run a chunk of (set by
# the server before the fork), or None.
current: HeldMap | None = None
