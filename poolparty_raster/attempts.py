"""The attempts of a map's chunks: how many this driver made, the job running each, what each
asked for, and the deaths of those that died (a reason, the stderr's last lines, the captures
to archive), from which a lost chunk's report is written; and the request a retry after a
wall-time or memory kill makes (``retry_resources``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from poolparty_raster.errors import TaskLostError
from poolparty_raster.manifest import Manifest
from poolparty_raster.names import capture_stream, chunk_key
from poolparty_raster.polling import Presence
from poolparty_raster.schedulers.base import Scheduler, contiguous_runs
from poolparty_raster.settings import RESOURCE_KINDS
from poolparty_raster.workdir import WorkDir, tail_lines


@dataclass(slots=True)
class Attempt(Presence):
    """A chunk's attempts. ``job_id`` and the presence in polls are array mode's (in workers
    mode a worker, not the chunk, is the scheduler's member); a subclass rather than a field,
    so that a chunk costs one object, not two."""

    attempts: int = 0            # submissions by this driver (a resumed map starts afresh)
    job_id: str | None = None    # the job running it now; None while it waits to be submitted
    deaths: list[tuple[str, list[str]]] = field(default_factory=list)  # (reason, stderr tail)
    request: dict[str, str] | None = None  # this attempt's requests in place of the pool's
    # Why the last attempt died where no resubmission alone helps: "setup" (a set-up line
    # failed), "time" or "mem" (killed at its request); None otherwise.
    cause: str | None = None


class Attempts(dict[int, Attempt]):
    """Each chunk's attempts, made when a chunk is first looked up: only chunks submitted or
    that died have any (an entry for every chunk cost ~250 bytes a chunk in a map of a
    million). Also the captures of dead attempts, waiting to be archived."""

    def __init__(self, work_dir: WorkDir):
        super().__init__()
        self.work_dir = work_dir
        self.lost_captures: dict[str, str] = {}  # capture file -> its name in the archive
        self.request_options: dict[str, str] = {}  # kind -> the option naming it (messages)

    def __missing__(self, chunk: int) -> Attempt:
        state = self[chunk] = Attempt()
        return state

    def record_death(self, chunk: int, reason: str, captures: list[str]) -> list[str]:
        """Keep a dead attempt's reason and stderr tail for the report, its captures for the
        archive. Returns the stderr tail."""
        state = self[chunk]
        tail: list[str] = []
        for name in captures:
            stream = capture_stream(name)
            if stream == "stderr":
                try:
                    with open(self.work_dir.file(name), "rb") as f:
                        tail = tail_lines(f.read())
                except FileNotFoundError:  # the attempt lives on (a silent worker) and moved it
                    continue
            self.lost_captures[name] = f"{chunk_key(chunk)}.attempt-{len(state.deaths) + 1}.{stream}"
        state.deaths.append((reason, tail))
        return tail

    def wrote_stderr(self) -> bool:
        """Whether a dead attempt left stderr lines (a user should see them: the work_dir is
        kept)."""
        return any(tail for state in self.values() for _, tail in state.deaths)

    def lost_error(self, lost_chunks: set[int], manifest: Manifest,
                   max_num_resubmissions: int) -> TaskLostError:
        lost = sorted(lost_chunks)
        tasks = sorted(i for c in lost for i in manifest.chunk_range(c))
        attempts = {c: self[c].attempts for c in lost}
        tails = {c: [line for _, tail in self[c].deaths for line in tail[-5:]] for c in lost}
        after = (" (no resubmission helps)" if all(self[c].cause for c in lost) else
                 f" after {max_num_resubmissions} resubmission(s)")
        lines = [f"{len(tasks)} task(s) died without a result{after}: task indices "
                 f"{ranges(tasks)}."]
        for chunk in lost[:5]:
            lines.append(f"  chunk {chunk} (tasks {ranges(list(manifest.chunk_range(chunk)))}), "
                         f"{attempts[chunk]} attempt(s){self._why(self[chunk].cause)}:")
            told: dict[tuple[str, tuple[str, ...]], list[int]] = {}  # the same death, told once
            for number, (reason, tail) in enumerate(self[chunk].deaths, 1):
                told.setdefault((reason, tuple(tail[-5:])), []).append(number)
            for (reason, tail), numbers in told.items():
                which = f"attempt {numbers[0]}" if len(numbers) == 1 else f"attempts {ranges(numbers)}"
                short = reason if len(reason) <= 300 else reason[:297] + "..."
                lines.append(f"    {which}: {short}; last stderr lines:")
                lines.extend(f"      | {line}" for line in tail or ("(nothing written)",))
        lines.append(f"The work_dir is kept: {self.work_dir.path} (see log.jsonl and scheduler.log)")
        return TaskLostError("\n".join(lines), tasks, attempts, tails, self.work_dir.path)

    def _why(self, cause: str | None) -> str:
        """What a chunk lost at once needs from its user."""
        if cause == "setup":
            return ", not resubmitted: a setup line failed on the node (fix the pool's setup=)"
        if cause in RESOURCE_KINDS:
            what = "wall time" if cause == "time" else "memory"
            option = self.request_options.get(cause, cause)
            return (f", killed at its {what} request and not resubmitted: raise {option}= or "
                    f"pass retry_resources={{{cause!r}: 2.0}} (or a callable)")
        return ""


def next_request(retry: Callable[[int, str], dict[str, str]] | dict[str, float] | None,
                 scheduler: Scheduler, attempt: int, kind: str,
                 current: dict[str, str] | None) -> dict[str, str] | None:
    """The requests of ``attempt`` (2 for the first resubmission) of a chunk killed at its
    ``kind`` request ("time" or "mem"), in place of the pool's; None: not to be retried.
    ``current`` is the killed attempt's own (None: the pool's)."""
    current = dict(current or {})
    if retry is None:
        return None
    if callable(retry):
        asked: Any = retry(attempt, kind)
        if asked is None:
            return None
        if not isinstance(asked, dict) or set(asked) - set(scheduler.requests):
            raise ValueError(f"retry_resources({attempt}, {kind!r}) returned {asked!r}: it must "
                             f"return None or a dict with keys among {sorted(scheduler.requests)}")
        return {**current, **{k: str(v) for k, v in asked.items()}}
    factor = retry.get(kind)
    value = current.get(kind) or scheduler.requests.get(kind)
    if factor is None or value is None:
        return None
    return {**current, kind: scheduler.scale_request(kind, value, factor)}


def check_retry_resources(retry: Any, scheduler: Scheduler | None) -> None:
    """Refuse, when the pool is made, a ``retry_resources`` its backend cannot act on: one
    that tells no kill, a factor for a request it cannot enlarge or the pool does not make.
    (A callable may return ``{}``, the same request again, on any backend that tells kills.)"""
    if retry is None:
        return
    name = getattr(scheduler, "name", "this pool")
    if scheduler is None or not scheduler.request_options:
        raise ValueError(f"retry_resources: {name} tells no wall-time or memory kill")
    for kind in retry if isinstance(retry, dict) else ():
        if kind not in scheduler.requests:
            raise ValueError(f"retry_resources: {name} cannot resubmit with a larger {kind!r} "
                             f"request (it can: {sorted(scheduler.requests) or 'none'})")
        if scheduler.requests[kind] is None:
            option = scheduler.request_options.get(kind, kind)
            raise ValueError(f"retry_resources={{{kind!r}: {retry[kind]}}} multiplies the pool's "
                             f"request, but it makes none: set {option}=")
        scheduler.scale_request(kind, scheduler.requests[kind], retry[kind])  # readable?


def describe_request(scheduler: Scheduler, request: dict[str, str] | None) -> str:
    """``time=0:02:00, mem=4G``: what an attempt asked for of the resources a kill names."""
    asked = {**scheduler.requests, **(request or {})}
    return ", ".join(f"{scheduler.request_options.get(k, k)}={v}" for k, v in asked.items()
                     if v is not None)


def ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(indices))
