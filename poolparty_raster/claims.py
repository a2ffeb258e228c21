"""Workers mode's claims: which worker runs which chunk, in the work_dir's ``claims/``.

    claims/NNNNNN          a run of chunks from NNNNNN is taken (claimfiles.py: runs form a
                           chain from chunk 0 and never overlap); holds "<worker> <host> <pid>
                           <token>" (the token names the worker's captures), and the run's
                           length where it is more than one; its mtime is the worker's
                           heartbeat. A finished chunk keeps its claim.
    claims/NNNNNN.free     the driver freed chunk NNNNNN (its worker died before its result)
    claims/NNNNNN.again    a worker's claim of that freed chunk
    claims/NNNNNN.reissue  the driver lets a second worker run this straggling chunk
    claims/NNNNNN.dup      that second worker's claim
    claims/NNNNNN.redo     the chunk's stored output is unreadable: run it although it is done
    claims/worker.<host>-<pid>-<ns>  a worker's badge (one per run length): its claims are
                           hard links to it

A claim is a hard link to its worker's badge: exactly one process can make a link of a name,
also on NFS, and a link allocates nothing. The links share the badge's mtime, so one
heartbeat covers the claim the worker runs. Where hard links are not supported, a claim is
an ``O_CREAT | O_EXCL`` file holding the worker's name, of one chunk (claimmaker.py is the
worker's side). The driver creates the directory and removes it when the map ends; a worker
never creates it, so one that starts after the map ended (its work_dir removed) finds nothing
to do. The driver sees it through ``survey`` (one listing; what it keeps does not grow with
the claims that finished chunks keep) or ``probe`` (runs looked up by name, along the chain
as far as it is known and then on): claimwatch.py says when which.
"""
from __future__ import annotations

import bisect
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

# process_token: names.py and the applier's block files name their files with it.
from poolparty_raster.claimfiles import (AGAIN, DUPLICATE, FREE, REDO, REISSUE, process_token,
                                         suffixed)
from poolparty_raster.claimmaker import ClaimMaker
from poolparty_raster.lookupcosts import LookupCosts

__all__ = ["Claims", "ClaimsView", "process_token"]


@dataclass
class ClaimsView:
    """What the driver saw of claims/: ``claims`` {chunk: (holder, heartbeat mtime)} of first
    runs, ``duplicated`` {chunk: holder} of second runs, ``holders`` of the claims seen, and
    ``run_starts`` {chunk: the chunk its run starts at} of the chunks in ``claims`` whose run
    is longer than one (a run's worker runs its chunks in order)."""

    claims: dict[int, tuple[str, float]] = field(default_factory=dict)
    duplicated: dict[int, str] = field(default_factory=dict)
    holders: set[str] = field(default_factory=set)
    run_starts: dict[int, int] = field(default_factory=dict)


class Claims(ClaimMaker):
    def __init__(self, path: str):
        super().__init__(path)
        self._costs = LookupCosts()  # the driver's: what a lookup and a listing cost here
        self._runs: dict[int, int] = {}  # the driver's: start -> length of the runs seen
        self._starts: list[int] = []  # their starts, ascending
        self._chain_end = 0  # where the runs seen, from chunk 0 without a gap, end
        self._freed: set[int] = set()  # chunks with a .free name (this driver's, or listed)
        self._listed = False  # whether claims/ was listed yet (to learn an earlier driver's .free)

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
        """{chunk: (holder, heartbeat mtime)} of every first-run claim present, finished
        chunks' too (with mtime 0 where the holder was known without a stat: no heartbeat
        matters there). A claim just made may show an empty holder."""
        return self._list(finished, keep_finished=True).view.claims

    def survey(self, finished: Collection[int]) -> ClaimsView:
        """What claims/ holds, in one listing that keeps nothing per finished chunk: the
        first-run claims of the chunks not in ``finished``, the second runs' claims, and the
        holder of every claim, finished chunks' too. A run whose chunks are all finished
        costs set lookups here once its badge is known (a map of a million chunks keeps up
        to a million claims: a list and a tuple each were ~400 MB)."""
        return self._list(finished).view

    def probe(self, chunks: Iterable[int], second_runs: Iterable[int] = (),
              listing: bool = False) -> ClaimsView:
        """The claims of these chunks alone, and the second runs' claims of ``second_runs``:
        looked up by name (a stat a run, along the chain of runs), or through one listing of
        claims/ where that costs less (and the first time, to find an earlier driver's freed
        chunks). On a networked filesystem a lookup, of a missing name too, is a round trip
        (GlusterFS: 0.3-2 ms), where a listing brings hundreds of names a round trip. Both
        costs are measured as they are paid (LookupCosts). ``listing``: list claims/ in any
        case (what a live worker freed shows in a listing alone)."""
        chunks, second_runs = list(chunks), list(second_runs)
        view = ClaimsView()
        if not self._costs.lookup_seconds and len(chunks) > LookupCosts.FEW and self._listed:
            # The last chunks, the least likely to be claimed: missing names, as most are.
            sample, chunks = chunks[-LookupCosts.FEW:], chunks[:-LookupCosts.FEW]
            self._look_up(sample, (), view)
        if listing or not self._listed or \
                self._costs.listing_is_cheaper(len(chunks) + len(second_runs)):
            started = time.perf_counter()
            listed = self._list((), set(chunks), set(second_runs))
            self._costs.listing_took(time.perf_counter() - started, listed.entries)
            view.claims.update(listed.view.claims)
            view.duplicated.update(listed.view.duplicated)
            view.holders |= listed.view.holders
            view.run_starts.update(listed.view.run_starts)
        else:
            self._look_up(chunks, second_runs, view)
        return view

    def _look_up(self, chunks: list[int], second_runs: Iterable[int], view: ClaimsView) -> None:
        started, lookups = time.perf_counter(), 0
        runs: dict[int, tuple[str, float, int] | None] = {}
        chain_ends = None  # where this look found the chain to end
        for chunk in chunks:
            if chunk in self._freed:
                claim = self._read(self.path_of(chunk) + AGAIN, chunk)
                lookups += 1
            elif chain_ends is not None and chunk >= chain_ends and not self.files_seen:
                continue  # past the chain's end: no run holds it
            else:
                start, walked = self._start_of(chunk)
                if start is None:
                    chain_ends = self._chain_end
                lookups += walked
                if start is None:
                    continue
                if start not in runs:
                    runs[start] = self._read(self.path_of(start), start)
                    lookups += 1
                claim = runs[start]
                if claim is not None and claim[2] > 1:
                    view.run_starts[chunk] = start
            if claim is not None:
                view.claims[chunk] = claim[:2]
                view.holders.add(claim[0])
        for chunk in second_runs:
            holder = self._read_holder(self.path_of(chunk) + DUPLICATE)
            lookups += 1
            if holder is not None:
                view.duplicated[chunk] = holder
                view.holders.add(holder)
        self._costs.lookups_took(time.perf_counter() - started, max(lookups, 1))

    def _start_of(self, chunk: int) -> tuple[int | None, int]:
        """(where the run holding ``chunk`` starts, None where no run holds it; lookups
        made). Past the runs known, the chain is followed by name: the next run starts where
        the last one ends. Where it breaks off before the chunk and claims are files of
        their own (without hard links a worker steps over finished chunks unclaimed), the
        chunk's own claim is looked up."""
        at = bisect.bisect_right(self._starts, chunk) - 1
        if at >= 0 and self._starts[at] + self._runs[self._starts[at]] > chunk:
            return self._starts[at], 0  # a run seen: run claims are never removed
        walked = 0
        while self._chain_end <= chunk:
            claim = self._read(self.path_of(self._chain_end), self._chain_end)
            walked += 1
            if claim is None:
                if self._chain_end == chunk or not self.files_seen:
                    return None, walked
                claim = self._read(self.path_of(chunk), chunk)
                if claim is None:
                    return None, walked + 1
                self._learn(chunk, claim[2])
                return chunk, walked + 1
            self._learn(self._chain_end, claim[2])
        return self._starts[bisect.bisect_right(self._starts, chunk) - 1], walked

    def _learn(self, start: int, length: int) -> None:
        if start not in self._runs:
            self._runs[start] = length
            bisect.insort(self._starts, start)
            while self._chain_end in self._runs:
                self._chain_end += self._runs[self._chain_end]

    def _list(self, finished: Collection[int], chunks: Collection[int] | None = None,
              second_runs: Collection[int] | None = None, keep_finished: bool = False
              ) -> _Listing:
        """One pass over claims/: the claims of ``chunks`` (all where None) that are not
        ``finished`` (or are, with ``keep_finished``), and the second runs' claims of
        ``second_runs`` (all where None)."""
        listing = _Listing()
        view = listing.view
        runs: list[tuple[int, str, float, int]] = []
        again: dict[int, tuple[str, float]] = {}
        try:
            entries = os.scandir(self.path)
        except FileNotFoundError:
            return listing
        with entries:
            for entry in entries:
                listing.entries += 1
                name = entry.name
                if name.isdigit():
                    start = int(name)
                    known = self._known(start, entry.inode())
                    if known is not None:
                        self._learn(start, known[1])
                        if all(c in finished for c in range(start, start + known[1])):
                            view.holders.add(known[0])
                            if keep_finished:
                                runs.append((start, known[0], 0.0, known[1]))
                            continue
                    claim = self._read(entry.path, start, entry)
                    if claim is not None:
                        self._learn(start, claim[2])
                        view.holders.add(claim[0])
                        runs.append((start, *claim))
                elif (chunk := suffixed(name, FREE)) is not None:
                    self._freed.add(chunk)
                elif (chunk := suffixed(name, AGAIN)) is not None:
                    claim = self._read(entry.path, chunk, entry)
                    if claim is not None:
                        again[chunk] = claim[:2]
                        view.holders.add(claim[0])
                elif (chunk := suffixed(name, DUPLICATE)) is not None:
                    if second_runs is None or chunk in second_runs:
                        holder = self._read_holder(entry.path)
                        if holder is not None:
                            view.duplicated[chunk] = holder
                            view.holders.add(holder)
        self._listed = True

        def wanted(chunk: int) -> bool:
            return (chunks is None or chunk in chunks) and (keep_finished or chunk not in finished)
        for start, holder, mtime, length in runs:
            for chunk in range(start, start + length):
                if chunk not in self._freed and wanted(chunk):
                    view.claims[chunk] = (holder, 0.0 if chunk in finished else mtime)
                    if length > 1:
                        view.run_starts[chunk] = start
        for chunk, claim in again.items():
            if chunk in self._freed and wanted(chunk):
                view.claims[chunk] = claim
        return listing

    def holder_of(self, chunk: int) -> str:
        """The holder of a chunk's first-run claim; "" when it has none."""
        if chunk in self._freed or os.path.exists(self.path_of(chunk) + FREE):
            return self._read_holder(self.path_of(chunk) + AGAIN) or ""
        start, _ = self._start_of(chunk)
        claim = self._read(self.path_of(start), start) if start is not None else None
        return claim[0] if claim is not None else ""

    def duplicates(self) -> dict[int, str]:
        """{chunk: holder} of the second runs of re-issued chunks."""
        found = {}
        for name in self._names():
            chunk = suffixed(name, DUPLICATE)
            if chunk is not None:
                holder = self._read_holder(os.path.join(self.path, name))
                if holder is not None:
                    found[chunk] = holder
        return found

    def freed_by_its_worker(self, chunk: int) -> bool:
        """Whether a chunk of a run has a ``.free`` name that the driver has not seen: its
        worker gave it up behind a slow chunk (claimmaker.free_unstarted), and whoever holds
        it now holds it as ``.again``. Asked before a gone worker's chunk is released (a
        lookup by name sees the run's claim alone)."""
        if chunk in self._freed or not os.path.exists(self.path_of(chunk) + FREE):
            return False
        self._freed.add(chunk)
        return True

    def release(self, chunk: int, holder: str | None = None) -> None:
        """Free a dead worker's chunk for another worker to claim: a ``.free`` name of its
        own, since its run's claim must stay (the next run starts where it ends). A freed
        chunk's own claim (``.again``) is removed instead, where it is ``holder``'s (any
        holder's where None)."""
        if not self.make_free(chunk):
            again = self.path_of(chunk) + AGAIN
            if holder is None or self._read_holder(again) == holder:
                self._unlink(again)
                self._forget(chunk)
        self._freed.add(chunk)

    def release_second_run(self, chunk: int) -> None:
        """Free a re-issued chunk's second run (its worker died) for another worker."""
        self._unlink(self.path_of(chunk) + DUPLICATE)

    def reissue(self, chunk: int) -> None:
        """Let one more worker run a straggling chunk."""
        self._mark(chunk, REISSUE)

    def redo(self, chunk: int) -> None:
        """Let a worker run a chunk counted as done (its output turned out unreadable) once
        its claim is released."""
        self._mark(chunk, REDO)

    def _mark(self, chunk: int, suffix: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f"{suffix}.")
        os.close(fd)
        os.replace(tmp, self.path_of(chunk) + suffix)

    def withdraw_reissue(self, chunk: int) -> None:
        """The chunk finished: no worker should start its second run any more."""
        self._unlink(self.path_of(chunk) + REISSUE)


@dataclass
class _Listing:
    view: ClaimsView = field(default_factory=ClaimsView)
    entries: int = 0  # names listed: what the listing's cost is measured against
