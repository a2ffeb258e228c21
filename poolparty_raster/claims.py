"""Workers mode's claims: which worker runs which chunk, in the work_dir's ``claims/``.

    claims/NNNNNN          chunk NNNNNN is taken; holds "<worker> <host> <pid> <token>" (the
                           token names the worker's captures); its mtime is the worker's
                           heartbeat. A finished chunk keeps its claim.
    claims/NNNNNN.reissue  the driver lets a second worker run this straggling chunk
    claims/NNNNNN.dup      that second worker's claim
    claims/NNNNNN.redo     the chunk's stored output is unreadable: run it although it is done
    claims/worker.<host>-<pid>-<ns>  a worker's badge: its claims are hard links to it

A claim is a hard link to its worker's badge, a file the worker makes once holding its name:
exactly one process can make a link of a name, also on NFS, and a link allocates nothing,
where a new file a chunk cost a file creation, the slowest metadata operation on NFS and on
a busy local disk alike. The links share the badge's mtime, so one heartbeat covers the
claim the worker runs. Where hard links are not supported, a claim is an ``O_CREAT |
O_EXCL`` file holding the worker's name.
The driver creates the directory and removes it when the map ends; a worker never creates it,
so one that starts after the map ended (its work_dir removed) finds nothing to do. The driver
sees it through ``survey`` (one listing; what it keeps does not grow with the claims that
finished chunks keep) or ``probe`` (chunks looked up by name): claimwatch.py says when which.
"""
from __future__ import annotations

import collections
import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from poolparty_raster.lookupcosts import LookupCosts

_REISSUE = ".reissue"
_DUPLICATE = ".dup"
_REDO = ".redo"
_BADGE_PREFIX = "worker."
# What os.link raises where the filesystem has no hard links: claims are O_EXCL files there.
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


def out_of_links(exc: OSError, linked_before: int) -> bool:
    """Whether a failed link means that its source takes no more links (the caller starts
    another): EMLINK, or ENOSPC once the source has links. GlusterFS keeps an extended
    attribute per link on its brick's inode, and an ext4 brick holds about 40 of them in a
    block: the next link fails with ENOSPC while the disk has room. A source's first link
    failing with ENOSPC is a full disk."""
    return exc.errno == errno.EMLINK or (exc.errno == errno.ENOSPC and linked_before > 0)
# Claims a worker tries one by one before it lists claims/ (a round trip each on NFS: many
# workers racing for the same chunks list instead).
DIRECT_TRIES = 4


def process_token() -> str:
    """``<host>-<pid>-<ns>``: names this process's own files on a filesystem that many hosts
    share, unique also after a pid is reused."""
    return f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"


def _key(chunk: int) -> str:
    return f"{chunk:06d}"


@dataclass
class ClaimsView:
    """What the driver saw of claims/: ``claims`` {chunk: (holder, heartbeat mtime)} of first
    runs, ``duplicated`` {chunk: holder} of second runs, ``holders`` of the claims seen."""

    claims: dict[int, tuple[str, float]] = field(default_factory=dict)
    duplicated: dict[int, str] = field(default_factory=dict)
    holders: set[str] = field(default_factory=set)


class Claims:
    def __init__(self, path: str):
        self.path = path
        self._holders: dict[Any, str] = {}  # badge inode, or (chunk, inode) -> holder
        self._cursor = 0  # a worker's: the next chunk it tries to claim directly
        self._stride = 1  # a worker's: how far it steps after a claim (workers beside it + 1)
        self._behind: collections.deque[int] = collections.deque()  # free at the last listing
        self._badge: tuple[str, str, int] | None = None  # a worker's: (name, path, inode)
        self._badge_links = 0  # claims linked to the badge
        self._hard_links = True
        self._costs = LookupCosts()  # the driver's: what a lookup and a listing cost here

    def path_of(self, chunk: int) -> str:
        return f"{self.path}{os.sep}{_key(chunk)}"  # not os.path.join: asked for every claim

    # -- the driver's side ------------------------------------------------------------
    def create(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def remove(self) -> None:
        """Remove claims/ and every claim in it. Each name goes as the listing returns it:
        shutil.rmtree lists a directory whole first, an object of ~250 bytes a claim (250 MB
        for a map of a million chunks, the driver's peak). A claim that a worker makes
        meanwhile, or that a listing skipped, is found by the next pass."""
        for _ in range(3):
            try:
                with os.scandir(self.path) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            self._unlink(entry.path)
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:  # not empty (a claim made meanwhile), or not ours to remove
                continue
        shutil.rmtree(self.path, ignore_errors=True)

    def held(self, finished: Collection[int] = ()) -> dict[int, tuple[str, float]]:
        """{chunk: (holder, heartbeat mtime)} of every first-run claim present. A claim's
        holder is read once per badge (its links share its inode, and a badge stays till the
        map ends, so its inode is not reused), an O_EXCL claim once per chunk and inode. The
        claims of ``finished`` chunks whose holder is known are not looked at again (no
        heartbeat matters there: mtime 0): finished chunks keep their claims, and a stat
        each per poll is a round trip each on NFS. A claim just made may show an empty
        holder."""
        found: dict[int, tuple[str, float]] = {}
        try:
            entries = os.scandir(self.path)
        except FileNotFoundError:
            return {}
        with entries:
            for entry in entries:
                if entry.name.isdigit():
                    chunk = int(entry.name)
                    if chunk in finished:
                        known = self._known_holder(chunk, entry.inode())
                        if known:
                            found[chunk] = (known, 0.0)
                            continue
                    claim = self._read(entry.path, chunk, entry)
                    if claim is not None:
                        found[chunk] = claim
        return found

    def survey(self, finished: Collection[int]) -> ClaimsView:
        """What claims/ holds, in one listing that keeps nothing per finished chunk: the
        first-run claims of the chunks not in ``finished`` (as ``held`` has them), the second
        runs' claims, and the holder of every claim, finished chunks' too. A finished chunk's
        claim costs a dict lookup here once its badge is known (a map of a million chunks
        keeps a million claims: a list and a tuple each were ~400 MB)."""
        view = ClaimsView()
        try:
            entries = os.scandir(self.path)
        except FileNotFoundError:
            return view
        with entries:
            for entry in entries:
                name = entry.name
                if name.isdigit():
                    chunk = int(name)
                    if chunk in finished:
                        known = self._known_holder(chunk, entry.inode())
                        if known:
                            view.holders.add(known)
                            continue
                    claim = self._read(entry.path, chunk, entry)
                    if claim is not None:
                        view.holders.add(claim[0])
                        if chunk not in finished:
                            view.claims[chunk] = claim
                elif name.endswith(_DUPLICATE) and name[:-len(_DUPLICATE)].isdigit():
                    holder = self._read_duplicate(entry.path)
                    if holder is not None:
                        view.duplicated[int(name[:-len(_DUPLICATE)])] = holder
                        view.holders.add(holder)
        return view

    def probe(self, chunks: Iterable[int], second_runs: Iterable[int] = ()) -> ClaimsView:
        """The claims of these chunks alone, and the second runs' claims of ``second_runs``:
        looked up by name (a stat each), or through one listing of claims/ where that costs
        less. On a networked filesystem a lookup, of a missing name too, is a round trip
        (GlusterFS: 0.3-2 ms), where a listing brings hundreds of names a round trip: the
        driver asking after 2,000 unclaimed chunks by name spent 5 stats a chunk of a map.
        Both costs are measured as they are paid (LookupCosts)."""
        chunks, second_runs = list(chunks), list(second_runs)
        view = ClaimsView()
        if not self._costs.lookup_seconds and len(chunks) > LookupCosts.FEW:
            # The last chunks, the least likely to be claimed: missing names, as most are.
            sample, chunks = chunks[-LookupCosts.FEW:], chunks[:-LookupCosts.FEW]
            self._look_up(sample, (), view)
        if self._costs.listing_is_cheaper(len(chunks) + len(second_runs)):
            self._probe_by_listing(set(chunks), set(second_runs), view)
        else:
            self._look_up(chunks, second_runs, view)
        return view

    def _look_up(self, chunks: list[int], second_runs: list[int], view: ClaimsView) -> None:
        started = time.perf_counter()
        for chunk in chunks:
            claim = self._read(self.path_of(chunk), chunk)
            if claim is not None:
                view.claims[chunk] = claim
                view.holders.add(claim[0])
        for chunk in second_runs:
            holder = self._read_duplicate(self.path_of(chunk) + _DUPLICATE)
            if holder is not None:
                view.duplicated[chunk] = holder
                view.holders.add(holder)
        self._costs.lookups_took(time.perf_counter() - started, len(chunks) + len(second_runs))

    def _probe_by_listing(self, chunks: set[int], second_runs: set[int], view: ClaimsView) -> None:
        started, entries_seen = time.perf_counter(), 0
        try:
            entries = os.scandir(self.path)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                entries_seen += 1
                name = entry.name
                if name.isdigit():
                    if int(name) in chunks:
                        claim = self._read(entry.path, int(name), entry)
                        if claim is not None:
                            view.claims[int(name)] = claim
                            view.holders.add(claim[0])
                elif name.endswith(_DUPLICATE) and name[:-len(_DUPLICATE)].isdigit():
                    chunk = int(name[:-len(_DUPLICATE)])
                    if chunk in second_runs:
                        holder = self._read_duplicate(entry.path)
                        if holder is not None:
                            view.duplicated[chunk] = holder
                            view.holders.add(holder)
        self._costs.listing_took(time.perf_counter() - started, entries_seen)

    def holder_of(self, chunk: int) -> str:
        """The holder of a chunk's first-run claim; "" when it has none."""
        claim = self._read(self.path_of(chunk), chunk)
        return claim[0] if claim is not None else ""

    def _known_holder(self, chunk: int, inode: int) -> str | None:
        return self._holders.get(inode) or self._holders.get((chunk, inode))

    def _read(self, path: str, chunk: int, entry: os.DirEntry[str] | None = None
              ) -> tuple[str, float] | None:
        """(holder, mtime) of the claim at ``path``; None when there is none."""
        try:
            info = entry.stat() if entry is not None else os.stat(path)
            key = info.st_ino if info.st_nlink > 1 else (chunk, info.st_ino)
            holder = self._holders.get(key)
            if holder is None:
                with open(path) as f:
                    holder = f.read()
                if holder:  # empty: its worker is still writing its name
                    self._holders[key] = holder
        except FileNotFoundError:
            return None
        return holder, info.st_mtime

    @staticmethod
    def _read_duplicate(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def duplicates(self) -> dict[int, str]:
        """{chunk: holder} of the second runs of re-issued chunks."""
        found = {}
        for name in self._names():
            if name.endswith(_DUPLICATE) and name[:-len(_DUPLICATE)].isdigit():
                holder = self._read_duplicate(os.path.join(self.path, name))
                if holder is not None:
                    found[int(name[:-len(_DUPLICATE)])] = holder
        return found

    def release(self, chunk: int) -> None:
        """Free a dead worker's chunk for another worker to claim. The holder read for its
        claim is forgotten: a new O_EXCL claim file of the chunk may get the freed inode."""
        self._unlink(self.path_of(chunk))
        for key in [k for k in self._holders if isinstance(k, tuple) and k[0] == chunk]:
            del self._holders[key]

    def release_second_run(self, chunk: int) -> None:
        """Free a re-issued chunk's second run (its worker died) for another worker."""
        self._unlink(self.path_of(chunk) + _DUPLICATE)

    def reissue(self, chunk: int) -> None:
        """Let one more worker run a straggling chunk."""
        self._mark(chunk, _REISSUE)

    def redo(self, chunk: int) -> None:
        """Let a worker run a chunk counted as done (its output turned out unreadable) once
        its claim is released."""
        self._mark(chunk, _REDO)

    def _mark(self, chunk: int, suffix: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f"{suffix}.")
        os.close(fd)
        os.replace(tmp, self.path_of(chunk) + suffix)

    def withdraw_reissue(self, chunk: int) -> None:
        """The chunk finished: no worker should start its second run any more."""
        self._unlink(self.path_of(chunk) + _REISSUE)

    # -- the worker's side ------------------------------------------------------------
    def claim_next(self, num_chunks: int, worker: str, done: set[int]) -> tuple[int, str] | None:
        """Claim the first chunk that is neither claimed nor in ``done``, else one the driver
        re-issued; returns (chunk, claim file), or None when nothing is left or the map has
        ended. ``done`` holds the chunks finished before this worker started (finished ones
        keep their claims).

        Workers take chunks in order, so the next free one is usually just ahead of this
        worker's last: it is tried directly (one link each). Workers side by side would each
        try first the chunk another just took (a failed link and a stat a chunk): one that
        stepped over k taken chunks to its claim has k others beside it, and steps k + 1
        chunks from then on, so that they interleave. After DIRECT_TRIES taken by other
        workers, and once that runs past the last chunk (for what was freed behind, or
        stepped over: a dead worker's chunk, one to redo, a straggler's second run), the
        worker lists claims/ instead, and tries the free chunks behind it that the listing
        showed before it lists again; listing it for every claim made a map of n chunks cost
        n^2."""
        try:
            tries = 0
            while self._behind and tries < DIRECT_TRIES:
                chunk = self._behind.popleft()
                tries += 1
                if self._create(self.path_of(chunk), worker):
                    return chunk, self.path_of(chunk)
            stepped = 0
            while self._cursor < num_chunks and tries < DIRECT_TRIES:
                chunk, self._cursor = self._cursor, self._cursor + 1
                if chunk in done:
                    continue
                tries += 1
                if self._create(self.path_of(chunk), worker):
                    self._stride = stepped + 1 if stepped else self._stride
                    self._cursor = chunk + self._stride
                    return chunk, self.path_of(chunk)
                stepped += 1
            return self._claim_by_listing(num_chunks, worker, done)
        except FileNotFoundError:  # the driver removed the claims: the map is over
            return None

    def _claim_by_listing(self, num_chunks: int, worker: str,
                          done: set[int]) -> tuple[int, str] | None:
        self._stride = 1
        names = os.listdir(self.path)
        claimed: set[int] = set()
        redo: set[int] = set()
        reissued: set[int] = set()
        duplicated: set[int] = set()
        by_suffix = {"": claimed, _REDO: redo, _REISSUE: reissued, _DUPLICATE: duplicated}
        for name in names:
            stem, dot, suffix = name.partition(".")
            if stem.isdigit() and dot + suffix in by_suffix:
                by_suffix[dot + suffix].add(int(stem))
        free = sorted(set(range(num_chunks)).difference(claimed, done - redo))
        for index, chunk in enumerate(free):
            if self._create(self.path_of(chunk), worker):
                self._cursor = max(self._cursor, chunk + 1)
                # Never a chunk at or past the cursor: the cursor reaches those.
                self._behind = collections.deque(c for c in free[index + 1:] if c < self._cursor)
                return chunk, self.path_of(chunk)
        for chunk in sorted(reissued - duplicated):
            if chunk not in done and self._create(self.path_of(chunk) + _DUPLICATE, worker):
                return chunk, self.path_of(chunk) + _DUPLICATE
        return None

    def _create(self, path: str, worker: str) -> bool:
        """Make the claim ``path`` for ``worker``; False if another process has it."""
        if self._hard_links:
            badge = self._badge_of(worker)
            try:
                os.link(badge[1], path)
                self._badge_links += 1
                return True
            except FileExistsError:
                # On NFS a link whose reply was lost is sent again and reports EEXIST.
                try:
                    return os.stat(path).st_ino == badge[2]
                except FileNotFoundError:  # released meanwhile: a later listing finds it
                    return False
            except OSError as exc:
                if out_of_links(exc, self._badge_links):  # the badge takes no more links
                    self._badge = None
                    return self._create(path, worker)
                if exc.errno not in NO_HARD_LINKS:
                    raise
                self._hard_links = False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(worker)
        return True

    def _badge_of(self, worker: str) -> tuple[str, str, int]:
        """This worker's badge, made on its first claim and complete before any link to it."""
        if self._badge is None or self._badge[0] != worker:
            path = os.path.join(self.path, _BADGE_PREFIX + process_token())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(worker)
                inode = os.fstat(fd).st_ino  # no lookup of what this worker just made
            self._badge = (worker, path, inode)
            self._badge_links = 0
        return self._badge

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
