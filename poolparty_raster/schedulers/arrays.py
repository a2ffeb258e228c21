"""What the schedulers of job arrays share (SLURM, Grid Engine, PBS): one throttle per map,
whatever arrays the map is split into, and the job records a resumed map starts from."""
from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from poolparty_raster.errors import SubmissionRefused
from poolparty_raster.schedulers.base import (JobRecord, OutOfReach, Scheduler, Submitter,
                                              SubmitSpec)


def split_throttle(throttle: int, sizes: Sequence[int]) -> list[int]:
    """Shares of a map's throttle for arrays of ``sizes`` submitted together: at least one
    each, at most its size, in proportion to the sizes, summing to no more than ``throttle``,
    since all of them may run at once. Arrays beyond the throttle get 0: they wait."""
    count = min(len(sizes), throttle)
    shares = [1] * count
    most = [(-size, i) for i, size in enumerate(sizes[:count]) if size > 1]  # chunks per share
    heapq.heapify(most)
    for _ in range(throttle - count):
        if not most:
            break
        _, i = heapq.heappop(most)
        shares[i] += 1
        if shares[i] < sizes[i]:
            heapq.heappush(most, (-sizes[i] / shares[i], i))
    return shares + [0] * (len(sizes) - count)


@dataclass
class ArrayThrottle:
    """Keeps a map's running chunks at ``spec.throttle`` across its arrays: an array throttle
    (``%K``, ``-tc K``) caps one array, and a resubmission or a split is another array. Only
    the map's first submission throttles itself (its arrays share the throttle); after it,
    ``throttles()`` is False and the engine submits no more chunks than the throttle has room
    for, each later array within that room."""

    started: set[str] = field(default_factory=set)  # names of maps with jobs queued

    def first(self, spec: SubmitSpec) -> bool:
        return spec.job_name not in self.started

    def shares(self, spec: SubmitSpec, sizes: Sequence[int]) -> Sequence[int | None]:
        """Each array's throttle; 0 for those left to the engine's room (as all later are)."""
        if not spec.throttle or not self.first(spec):
            return [spec.throttle] * len(sizes)
        return split_throttle(spec.throttle, sizes)

    def note(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> None:
        """Jobs of the map are queued (accepted now, or recorded by an earlier driver)."""
        if jobs:
            self.started.add(spec.job_name)

    def forget(self, spec: SubmitSpec) -> None:
        """All of the map's jobs were cancelled: its next array may throttle itself again."""
        self.started.discard(spec.job_name)

    def throttled(self, spec: SubmitSpec, groups: list[list[int]]
                  ) -> Iterator[tuple[list[int], int | None]]:
        """The arrays to submit now, each with its throttle (see :func:`with_shares`)."""
        return with_shares(groups, self.shares(spec, [len(group) for group in groups]))


def with_shares(groups: list[list[int]], shares: Sequence[int | None]
                ) -> Iterator[tuple[list[int], int | None]]:
    """Each group with its share of a throttle, up to the first group that has none: those
    wait, and the engine submits them within the room the throttle leaves."""
    for group, share in zip(groups, shares):
        if share == 0:
            return
        yield group, share


class ArrayScheduler(Scheduler):
    """A scheduler that runs a map as job arrays (or, with ``array=False``, one job per
    chunk). Subclasses set ``array``, ``submitter`` and ``throttle`` in ``__init__``."""

    array: bool
    submitter: Submitter
    throttle: ArrayThrottle

    def throttles(self, spec: SubmitSpec) -> bool:
        return self.array and self.throttle.first(spec)

    def remember(self, spec: SubmitSpec, jobs: Sequence[JobRecord]) -> None:
        self.submitter.note(spec, jobs)
        self.throttle.note(spec, jobs)

    def _submit_array(self, spec: SubmitSpec, chunks: list[int],
                      throttle: int | None) -> Iterator[JobRecord]:
        """One array; halved while a limit (per user, or on pending jobs) refuses it, which a
        smaller one may pass (the halves share its throttle; one with no share is left to the
        engine)."""
        try:
            record = self._submit_one_array(spec, chunks, throttle)
        except OutOfReach:
            raise
        except SubmissionRefused:
            if len(chunks) == 1:
                raise
            halves = [chunks[:len(chunks) // 2], chunks[len(chunks) // 2:]]
            shares = split_throttle(throttle, [len(h) for h in halves]) if throttle else [None] * 2
            for half, share in with_shares(halves, shares):
                yield from self._submit_array(spec, half, share)
            return
        yield record

    def _submit_one_array(self, spec: SubmitSpec, chunks: list[int],
                          throttle: int | None) -> JobRecord:
        """Submit ``chunks`` as one array with this throttle (SubmissionRefused: a limit)."""
        raise NotImplementedError
