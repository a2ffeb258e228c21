"""Workers mode: the driver's view of claims/ (whose chunk runs where), and the changes it
makes there (releasing a dead worker's chunk, issuing a straggler's once more).

A claim holds ``"<worker> <host> <pid> <token>"`` and may take a run of chunks (claims.py).
Claims are seen through a listing of claims/, which holds a claim for every run that ever ran
(up to a million entries, a second to list, for a map of a million chunks): a poll lists it
when the last listing's cost is at most 1/LISTING_SHARE of the time since; in between it looks
up by name the claims it saw running (their heartbeats). Where no more than PROBE_AT_MOST
chunks are left, or few beside those finished, they are looked up by name at every poll, and
listed as often as above (a listing alone shows what live workers freed); a worker that
ended makes the next poll list.
"""
from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING

from poolparty_raster.claims import ClaimsView

if TYPE_CHECKING:
    from poolparty_raster.engine import MapRun

LISTING_SHARE = 30
PROBE_AT_MOST = 4096


def holder_id(holder: str) -> int | None:
    """The worker number of a claim's holder."""
    first = holder.split()[0] if holder.split() else ""
    return int(first) if first.isdigit() else None


def holder_token(holder: str) -> str | None:
    """The token that names a claim's worker process's captures."""
    parts = holder.split()
    return parts[3] if len(parts) == 4 else None


def process_alive(pid: int, token: str) -> bool:
    """Whether process ``pid`` of this host, which made the claim token ``token``
    ("<host>-<pid>-<ns>", claims.process_token), still runs: not a zombie, and not a later
    process that got the same pid (it started after the token was made)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: not a worker of ours, but it runs
        pass
    if not os.path.isdir("/proc/self"):  # no /proc: the pid is all there is to go by
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command's name
    except (FileNotFoundError, ProcessLookupError):
        return False
    if fields[0] == b"Z":
        return False
    made = token.rsplit("-", 1)[-1]
    if made.isdigit() and _boot_time() is not None:
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        if started > int(made) / 1e9 + 2.0:  # boot time is told in whole seconds
            return False
    return True


@functools.cache
def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class ClaimWatch:
    """What the driver last saw of claims/, looked at once a poll (on a shared filesystem
    every claim read is a round trip); a change the driver makes there drops the copy."""

    def __init__(self, run: MapRun):
        self.run = run
        self.claims = run.work_dir.claims
        self.reissued: set[int] = set()       # chunks a second run may take
        self._reissue_spent: set[int] = set()  # chunks whose second runs used up their budget
        self._view: ClaimsView | None = None  # this poll's; None: to be looked at
        self._last_view = ClaimsView()  # the last one, for the claims seen running
        self._holder_ids: set[int | None] = set()  # the workers seen holding a claim
        self._listed_at = float("-inf")  # the last listing of claims/: when, and its cost
        self._listing_cost = 0.0
        self._list_next = True  # the next look lists claims/ (or probes all that is left)

    def forget(self, list_next: bool = False) -> None:
        """Look at claims/ again when next asked (a new poll); ``list_next``: by a listing
        (a worker ended: its claims may have been made since the last one)."""
        self._view = None
        self._list_next = self._list_next or list_next

    def view(self) -> ClaimsView:
        """The first-run claims of chunks not finished, and the second runs' claims."""
        if self._view is None:
            self._view = self._look()
            self._last_view = self._view
            self._holder_ids.update(map(holder_id, self._view.holders))
        return self._view

    def holders(self) -> set[int | None]:
        """The workers seen holding a claim, of a first or a second run (finished chunks keep
        their claims; a worker's are released only once it is gone)."""
        self.view()
        return self._holder_ids

    def unclaimed(self) -> int:
        """How many chunks a worker could take now: unclaimed, or re-issued and not yet taken
        again."""
        view = self.view()
        run = self.run
        taken = sum(1 for c in view.claims if not run.settled(c)
                    and (c not in self.reissued or c in view.duplicated))
        return run.outstanding_count() - taken

    def _look(self) -> ClaimsView:
        """All claims of unfinished chunks where a listing is due (or a probe of every chunk
        left is cheaper: few are left); else the claims seen running at the last look, and
        the second runs', looked up again by name."""
        run = self.run
        left = run.outstanding_count()
        second_runs = self.reissued | self._last_view.duplicated.keys()
        now = time.monotonic()
        listing_due = (self._list_next
                       or now - self._listed_at >= LISTING_SHARE * self._listing_cost)
        if left <= PROBE_AT_MOST or 4 * left <= len(run.finished):
            if listing_due or left <= PROBE_AT_MOST:
                # A listing, when due, also shows the chunks that live workers freed behind
                # a slow chunk (claimmaker.free_unstarted), which lookups by name take for
                # their run's: freed chunks left unclaimed are how the driver knows to start
                # a worker for them once the others ended.
                view = self.claims.probe(run.outstanding(), second_runs, listing=listing_due)
                if listing_due:
                    self._listed(now)
                return view
        elif listing_due:
            view = self.claims.survey(run.finished)
            self._listed(now)
            return view
        running = [c for c in self._last_view.claims if not run.settled(c)]
        return self.claims.probe(running, second_runs)

    def _listed(self, started: float) -> None:
        self._listed_at, self._list_next = started, False
        self._listing_cost = time.monotonic() - started

    # -- changes -------------------------------------------------------------------------------
    def release(self, chunk: int, holder: str) -> None:
        """Free a dead worker's chunk (``holder``'s) for another worker."""
        self.claims.release(chunk, holder)
        self._view = None

    def release_second_run(self, chunk: int, spent: bool) -> None:
        """Free a dead second run's claim; ``spent``: the chunk is issued no more."""
        if spent:
            self.claims.withdraw_reissue(chunk)
            self.reissued.discard(chunk)
            self._reissue_spent.add(chunk)
        self.claims.release_second_run(chunk)
        self._view = None

    def reissue(self, chunk: int, reason: str) -> None:
        """Let one more worker run the chunk (once per chunk); the first result wins."""
        if chunk in self.reissued or chunk in self._reissue_spent:
            return
        self.claims.reissue(chunk)
        self.reissued.add(chunk)
        self._view = None
        self.run.work_dir.log("reissued", chunk=chunk, reason=reason)

    def finished(self, chunk: int) -> None:
        """A re-issued chunk finished: no worker should start its second run any more."""
        if chunk in self.reissued:
            self.claims.withdraw_reissue(chunk)
