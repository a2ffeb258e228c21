"""Workers mode, the worker's side of claims/: claiming runs of chunks along the chain
(claimfiles.py says what a claim is), and how many chunks a worker claims at once (RunPacer).

On a networked filesystem every name is a round trip to the server (GlusterFS: 0.4-2 ms a
link, as long again to remove it when the map ends), which was most of what a small chunk
cost. A worker whose chunks are fast claims them in runs, one name a run; one whose chunks
take longer claims them one by one, as before, so that it never holds chunks that idle
workers could run for longer than about RUN_SECONDS.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Collection

from poolparty_raster.claimfiles import (AGAIN, BADGE_PREFIX, DUPLICATE, FREE, NO_HARD_LINKS,
                                         REDO, REISSUE, ClaimFiles, claim_text, out_of_links,
                                         process_token, suffixed)

# Claims a worker tries one by one before it lists claims/ (a round trip each on NFS: many
# workers racing for the same chunks list instead).
DIRECT_TRIES = 4
FAST_CHUNK_SECONDS = 0.01  # a chunk slower than this stops a worker's runs (back to one chunk)
RUN_SECONDS = 0.05         # a run is sized to take no longer than this, going by its last run
MAX_RUN = 64               # chunks a run takes at most


class RunPacer:
    """How many chunks a worker claims at once: one at first and after any chunk whose tasks
    took FAST_CHUNK_SECONDS or more; after a run whose chunks' tasks were all faster, as many
    as take RUN_SECONDS at the run's pace (its wall time a chunk, results stored and
    filesystem hiccups included), growing at most fourfold a run, up to MAX_RUN. A run's
    unstarted chunks wait for its worker, so this bounds what a worker holds back from idle
    workers (and how far the map's tail is stretched) to about RUN_SECONDS; a chunk that
    turns out slow within a run frees the rest of it for other workers after
    workerloop.RELEASE_AFTER_SECONDS (free_unstarted)."""

    def __init__(self) -> None:
        self.length = 1
        self._ran = 0        # chunks run at this length
        self._seconds = 0.0  # their wall time

    def ran(self, task_seconds: float, wall_seconds: float) -> None:
        """One chunk's tasks took ``task_seconds``, and the chunk ``wall_seconds`` from its
        claim to its stored result."""
        if task_seconds >= FAST_CHUNK_SECONDS:
            self.length, self._ran, self._seconds = 1, 0, 0.0
            return
        self._ran += 1
        self._seconds += wall_seconds
        if self._ran >= self.length:
            fits = int(RUN_SECONDS * self._ran / max(self._seconds, 1e-6))  # 0: slower
            self.length = min(MAX_RUN, 4 * self.length, 1 << max(0, fits.bit_length() - 1))
            self._ran, self._seconds = 0, 0.0


class ClaimMaker(ClaimFiles):
    """A worker's claims: the run it holds, where it thinks the chain ends, and its badges
    (one per run length: a claim is a link to the badge whose text says its length)."""

    def __init__(self, path: str):
        super().__init__(path)
        self._cursor = 0  # where this worker thinks the chain of runs ends
        self._run: collections.deque[int] = collections.deque()  # its run's chunks not handed out
        self._run_path = ""
        self._behind: collections.deque[int] = collections.deque()  # freed, at the last listing
        self._badges: dict[int, tuple[str, str, int]] = {}  # run length -> (worker, path, inode)
        self._badge_links: dict[int, int] = {}  # run length -> claims linked to its badge
        self._hard_links = True

    def claim_next(self, num_chunks: int, worker: str, done: Collection[int],
                   run: int = 1) -> tuple[int, str] | None:
        """The next chunk this worker runs, and the claim that holds it; None when nothing is
        left or the map has ended. The chunks of the run it claimed last come first (no call
        to the filesystem); then it claims a new run of ``run`` chunks where the chain ends
        (and the chunks in ``done`` there: finished before this worker started, without
        claims), trying DIRECT_TRIES times before it lists claims/; a claim that another
        worker made first tells it how far that run goes. After the chain's end, a listing
        shows the chunks the driver freed (claimed again one by one) and re-issued ones."""
        while self._run:
            chunk = self._run.popleft()
            if chunk not in done:
                return chunk, self._run_path
        try:
            tries = 0
            while self._behind and tries < DIRECT_TRIES:
                chunk = self._behind.popleft()
                tries += 1
                if self._create(self.path_of(chunk) + AGAIN, worker, 1):
                    return chunk, self.path_of(chunk) + AGAIN
            while self._cursor < num_chunks and tries < DIRECT_TRIES:
                tries += 1
                if self._take_run(num_chunks, worker, done, run):
                    return self.claim_next(num_chunks, worker, done, run)
            return self._claim_by_listing(num_chunks, worker, done, run)
        except FileNotFoundError:  # the driver removed the claims: the map is over
            return None

    def has_unstarted(self) -> bool:
        """Whether the run this worker claimed last has chunks it has not handed out."""
        return bool(self._run)

    def free_unstarted(self) -> list[int]:
        """Give up the chunks of this worker's run not handed out yet: each gets the ``.free``
        name the driver gives a dead worker's chunks, so that other workers claim it (as
        ``.again``), and claim_next hands none of them out. The caller keeps claim_next from
        running meanwhile (workerloop.ChunkWatch's lock)."""
        freed = list(self._run)
        self._run.clear()
        for at, chunk in enumerate(freed):
            try:
                self.make_free(chunk)
            except OSError:  # not freed (a full disk): this worker runs them after all
                self._run.extend(freed[at:])
                raise
        return freed

    def _take_run(self, num_chunks: int, worker: str, done: Collection[int], run: int) -> bool:
        """Claim the run that starts where the chain ends (the cursor); else move the cursor
        past the run another worker claimed there."""
        length = self._run_length(num_chunks, done, run)
        start = self._cursor
        if start >= num_chunks:
            return False
        if not self._create(self.path_of(start), worker, length):
            if not self._hard_links and length > 1:  # found out just now: runs of one
                return False
            claim = self._read(self.path_of(start), start)
            if claim is None:  # gone: only the driver's removal at the map's end does that
                raise FileNotFoundError(self.path_of(start))
            self._cursor = start + claim[2]
            return False
        self._cursor = start + length
        self._run = collections.deque(range(start, start + length))
        self._run_path = self.path_of(start)
        return True

    def _run_length(self, num_chunks: int, done: Collection[int], run: int) -> int:
        """``run`` chunks from the cursor, and the finished ones there before them. Without hard
        links a claim's text is written after its name exists, so a reader could not tell its
        length: runs are one chunk there, and finished chunks are stepped over unclaimed (no
        run covers them on such a filesystem)."""
        if not self._hard_links:
            while self._cursor in done:
                self._cursor += 1
            return 1
        start, finished = self._cursor, 0
        while start + finished < num_chunks and start + finished in done:
            finished += 1
        return max(1, min(finished + run, num_chunks - start))

    def _claim_by_listing(self, num_chunks: int, worker: str, done: Collection[int],
                          run: int) -> tuple[int, str] | None:
        starts: dict[int, os.DirEntry[str]] = {}
        sets: dict[str, set[int]] = {FREE: set(), AGAIN: set(), REDO: set(), REISSUE: set(),
                                     DUPLICATE: set()}
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.isdigit():
                    starts[int(entry.name)] = entry
                    continue
                for suffix, chunks in sets.items():
                    chunk = suffixed(entry.name, suffix)
                    if chunk is not None:
                        chunks.add(chunk)
                        break
        free = sorted(c for c in sets[FREE] - sets[AGAIN] if c not in done or c in sets[REDO])
        for index, chunk in enumerate(free):
            if self._create(self.path_of(chunk) + AGAIN, worker, 1):
                self._behind = collections.deque(free[index + 1:])
                return chunk, self.path_of(chunk) + AGAIN
        while self._cursor in starts:  # the chain, as listed: each run's length is its text's
            self._cursor += self._length_of(starts[self._cursor])
        while self._cursor < num_chunks:
            if self._take_run(num_chunks, worker, done, run):
                return self.claim_next(num_chunks, worker, done, run)
        for chunk in sorted(sets[REISSUE] - sets[DUPLICATE]):
            if chunk not in done and self._create(self.path_of(chunk) + DUPLICATE, worker, 1):
                return chunk, self.path_of(chunk) + DUPLICATE
        return None

    def _length_of(self, entry: os.DirEntry[str]) -> int:
        """The length of the run claimed by this listed claim (one, without hard links)."""
        if not self._hard_links:
            return 1
        start = int(entry.name)
        known = self._known(start, entry.inode())
        if known is not None:
            return known[1]
        claim = self._read(entry.path, start, entry)
        if claim is None:  # gone: only the driver's removal at the map's end does that
            raise FileNotFoundError(entry.path)
        return claim[2]

    def _create(self, path: str, worker: str, length: int) -> bool:
        """Make the claim ``path`` of ``length`` chunks for ``worker``; False if another process
        has it, or if this filesystem turns out to have no hard links and ``length`` > 1
        (the caller claims one chunk instead)."""
        if self._hard_links:
            badge = self._badge_of(worker, length)
            try:
                os.link(badge[1], path)
                self._badge_links[length] += 1
                return True
            except FileExistsError:
                # On NFS a link whose reply was lost is sent again and reports EEXIST.
                try:
                    return os.stat(path).st_ino == badge[2]
                except FileNotFoundError:  # released meanwhile: a later listing finds it
                    return False
            except OSError as exc:
                if out_of_links(exc, self._badge_links[length]):  # the badge takes no more
                    del self._badges[length]
                    return self._create(path, worker, length)
                if exc.errno not in NO_HARD_LINKS:
                    raise
                self._hard_links = False
                if length > 1:
                    return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(worker)
        return True

    def _badge_of(self, worker: str, length: int) -> tuple[str, str, int]:
        """This worker's badge for runs of ``length``, made on its first such claim and
        complete before any link to it."""
        badge = self._badges.get(length)
        if badge is None or badge[0] != worker:
            path = os.path.join(self.path, BADGE_PREFIX + process_token())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(claim_text(worker, length))
                inode = os.fstat(fd).st_ino  # no lookup of what this worker just made
            badge = self._badges[length] = (worker, path, inode)
            self._badge_links[length] = 0
        return badge
