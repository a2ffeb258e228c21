"""The attempts of a map's chunks: how many this driver made, the job running each, and the
deaths of those that died (a reason, the stderr's last lines, the captures to archive), from
which a lost chunk's report is written."""
from __future__ import annotations

from dataclasses import dataclass, field

from poolparty_raster.errors import TaskLostError
from poolparty_raster.manifest import Manifest
from poolparty_raster.names import capture_stream, chunk_key
from poolparty_raster.polling import Presence
from poolparty_raster.schedulers.base import contiguous_runs
from poolparty_raster.workdir import WorkDir, tail_lines


@dataclass(slots=True)
class Attempt(Presence):
    """A chunk's attempts. ``job_id`` and the presence in polls are array mode's (in workers
    mode a worker, not the chunk, is the scheduler's member); a subclass rather than a field,
    so that a chunk costs one object, not two."""

    attempts: int = 0            # submissions by this driver (a resumed map starts afresh)
    job_id: str | None = None    # the job running it now; None while it waits to be submitted
    deaths: list[tuple[str, list[str]]] = field(default_factory=list)  # (reason, stderr tail)


class Attempts(dict[int, Attempt]):
    """Each chunk's attempts, made when a chunk is first looked up: only chunks submitted or
    that died have any (an entry for every chunk cost ~250 bytes a chunk in a map of a
    million). Also the captures of dead attempts, waiting to be archived."""

    def __init__(self, work_dir: WorkDir):
        super().__init__()
        self.work_dir = work_dir
        self.lost_captures: dict[str, str] = {}  # capture file -> its name in the archive

    def __missing__(self, chunk: int) -> Attempt:
        state = self[chunk] = Attempt()
        return state

    def record_death(self, chunk: int, reason: str, captures: list[str]) -> None:
        """Keep a dead attempt's reason and stderr tail for the report, its captures for the
        archive."""
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
        lines = [f"{len(tasks)} task(s) died without a result after "
                 f"{max_num_resubmissions} resubmission(s): task indices {ranges(tasks)}."]
        for chunk in lost[:5]:
            lines.append(f"  chunk {chunk} (tasks {ranges(list(manifest.chunk_range(chunk)))}), "
                         f"{attempts[chunk]} attempt(s):")
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


def ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in contiguous_runs(indices))
