"""The work_dir protocol: the only code that reads and writes the work_dir's files (their
names are spelled in names.py, the atomic writes and archive updates are in files.py).

Layout (every file mode 0600, the directory 0700; ownership.py says which directories are
ours)::

    poolparty_raster.mark  written first: what makes the directory a work_dir (ownership.py)
    manifest.json         what map this is: digest of function and tasks, chunk boundaries
    tasks.zip             function.pkl and one chunks/NNNNNN.pkl per chunk, written once
    script.py             the worker-node program (carries the caller's environment)
    log.jsonl             one JSON event per line
    jobs.jsonl            the scheduler's job records, one line each, read on resume
    scheduler.log         what the scheduler itself printed for the jobs (before Python ran)
    tasks.results.zip     reduced outputs, one entry per chunk; STORED, never deflated
    tasks.exceptions.zip
    tasks.stdout.zip
    tasks.stderr.zip
    chunk-NNNNNN.*        a worker's loose outputs, until the driver reduces them
    results.<worker>      workers mode: a worker's result log; its chunks' results are hard
                          links to it (resultlog.py)
    capture.<worker>.*.part  workers mode: a worker's live stdout and stderr, kept from chunk
                          to chunk while empty (a chunk's output moves to chunk-NNNNNN.stderr)

A worker writes ``.stdout``/``.stderr``/``.exception`` first and ``.result`` last, each under a
temporary name renamed into place (a result in workers mode: a hard link to its complete record
in the worker's result log): a chunk is finished exactly when its result exists.
"""
from __future__ import annotations

import array
import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import pickle
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import cloudpickle

from poolparty_raster import names, ownership, resultlog
from poolparty_raster.claims import Claims
from poolparty_raster.errors import WorkDirMismatchError
from poolparty_raster.files import (ForwardWriter, StoredArchive, append_line, atomic_write,
                                    extend_archive, numbered_entries, read_jsonl)
from poolparty_raster.names import (ARCHIVE_KINDS, capture_stream, chunk_key, loose_name,
                                    parse_loose_name, parse_worker_capture)

_ARCHIVE_NAMES = {"result": "tasks.results.zip", "exception": "tasks.exceptions.zip",
                  "stdout": "tasks.stdout.zip", "stderr": "tasks.stderr.zip"}


def function_digest(func_bytes: bytes) -> str:
    return hashlib.sha256(func_bytes).hexdigest()


SPACE_PROBE_BYTES = 1 << 20  # what a result of one chunk may need, at least

# The on-disk format: 2 since a chunk's result carries its exception records.
FORMAT = 2


@dataclass(frozen=True)
class Manifest:
    """What map a work_dir holds. ``chunk_starts[i]`` is the input index of chunk i's first task."""

    digest: str
    num_tasks: int
    chunk_starts: Sequence[int]
    job_name: str
    mode: str = "array"  # "array": one job per chunk; "workers": jobs claim chunks until none is left
    function_digest: str = ""
    format: int = FORMAT

    def __post_init__(self) -> None:
        # Held by the driver and every worker for the map's life: a list of a million chunks'
        # starts is 36 MB. Evenly spaced starts (a chunksize's) are a range, others an array.
        object.__setattr__(self, "chunk_starts", compact_starts(self.chunk_starts))

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_starts)

    def chunk_range(self, chunk: int) -> range:
        end = self.chunk_starts[chunk + 1] if chunk + 1 < self.num_chunks else self.num_tasks
        return range(self.chunk_starts[chunk], end)


def compact_starts(starts: Sequence[int]) -> Sequence[int]:
    """``starts`` (ascending input indices) as a range where evenly spaced, else an array of
    8 bytes each."""
    if isinstance(starts, (range, array.array)):
        return starts
    packed = array.array("q", starts)
    if len(packed) == 1:
        return range(packed[0], packed[0] + 1)
    step = packed[1] - packed[0] if len(packed) > 1 else 0
    if step > 0:
        spaced = range(packed[0], packed[0] + len(packed) * step, step)
        if packed == array.array("q", spaced):
            return spaced
    return packed


class TasksWriter:
    """Streams the pickled function and task chunks into ``tasks.zip`` under a temporary name."""

    def __init__(self, directory: str, func_bytes: bytes):
        fd, self.tmp_path = tempfile.mkstemp(prefix=".tasks.", suffix=".tmp", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._stream = ForwardWriter(self._file)
        self._zip = zipfile.ZipFile(self._stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._hash = hashlib.sha256(func_bytes)
        self._zip.writestr("function.pkl", func_bytes)
        self.chunk_starts: list[int] = []
        self.num_tasks = 0

    def add_chunk(self, tasks: list[Any]) -> None:
        data = cloudpickle.dumps(tasks)
        self._hash.update(len(data).to_bytes(8, "little"))
        self._hash.update(data)
        self._zip.writestr(f"chunks/{chunk_key(len(self.chunk_starts))}.pkl", data)
        self.chunk_starts.append(self.num_tasks)
        self.num_tasks += len(tasks)

    def finish(self) -> str:
        """Close the archive and return the digest of function and tasks."""
        self._zip.close()
        self._stream.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        try:
            self._zip.close()
        except (OSError, ValueError):
            pass
        self._file.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


class _LooseEntries(Mapping[str, str]):
    """{archive entry: loose file name} of one kind for a reduce: the chunks' entries
    (``chunk_key``: ``loose_name``) made as they are asked for, then ``others``."""

    def __init__(self, chunks: list[int], kind: str, others: dict[str, str]):
        self.chunks, self.kind, self.others = chunks, kind, others
        self._members: set[int] | None = None

    def __len__(self) -> int:
        return len(self.chunks) + len(self.others)

    def __iter__(self) -> Iterator[str]:
        yield from map(chunk_key, self.chunks)
        yield from self.others

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        for chunk in self.chunks:
            yield chunk_key(chunk), loose_name(chunk, self.kind)
        yield from self.others.items()

    def values(self) -> Iterator[str]:  # type: ignore[override]
        for _, name in self.items():
            yield name

    def __getitem__(self, entry: str) -> str:
        if entry in self.others:
            return self.others[entry]
        if entry.isascii() and entry.isdigit() and entry == chunk_key(int(entry)):
            if self._members is None:
                self._members = set(self.chunks)
            if int(entry) in self._members:
                return loose_name(int(entry), self.kind)
        raise KeyError(entry)


# scan()'s entries of chunks with final files alone, one per set of kinds: shared, so that the
# thousands of loose chunks with a result and nothing else hold one between them.
_FINAL_SLOTS: dict[tuple[str, ...], dict[str, list[str]]] = {}


def _slot(names: tuple[str, ...]) -> dict[str, list[str]]:
    """scan()'s entry of a chunk with these loose files (sorted)."""
    final: list[str] = []
    live: list[str] = []
    for name in names:
        _, kind, is_live = parse_loose_name(name)
        if is_live:
            live.append(name)
        else:
            final.append(kind)
    if live:
        return {"final": final, "live": live}
    key = tuple(final)
    slot = _FINAL_SLOTS.get(key)
    if slot is None:
        slot = _FINAL_SLOTS[key] = {"final": final, "live": []}
    return slot


class WorkDir:
    """One map's directory on the shared filesystem."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._tasks: StoredArchive | None = None
        # kind -> (which version of the file: inode, mtime, size; the archive opened)
        self._archives: dict[str, tuple[tuple[int, int, int], StoredArchive]] = {}
        self.claims = Claims(self.file("claims"))  # workers mode: who runs which chunk
        self._logs = resultlog.LogIndex()  # where the results linked to result logs are
        # The last scan: every name listed, and what scan() returns. Between two reductions
        # most chunks have one loose file, their result: the names of the others alone are
        # kept by chunk (sorted), and chunks alike share one entry of scan(), so that a loose
        # chunk costs ~170 bytes here (a map may hold half its chunks loose), not ~1 kB.
        self._listed: set[str] = set()
        self._loose: dict[int, tuple[str, ...]] = {}
        self._scanned: dict[int, dict[str, list[str]]] = {}

    def file(self, name: str) -> str:
        """The path of a file directly in the work_dir (asked several times a chunk, where
        os.path.join's generality costs more than the rest)."""
        return f"{self.path}{os.sep}{name}"

    @property
    def tasks_path(self) -> str:
        return self.file("tasks.zip")

    @property
    def script_path(self) -> str:
        return self.file("script.py")

    @property
    def scheduler_log_path(self) -> str:
        return self.file("scheduler.log")

    def archive_path(self, kind: str) -> str:
        return self.file(_ARCHIVE_NAMES[kind])


    # -- creation ----------------------------------------------------------------------
    def create(self) -> ownership.Mark:
        """Make the directory a work_dir of ours (mode 0700, the mark written first), or check
        that it is one; a directory that is not ours is refused untouched."""
        return ownership.take(self.path)

    def remove_driver_temporaries(self) -> None:
        """Remove the temporary files of what only a driver writes (an archive, the manifest,
        tasks.zip), which a driver killed mid-write left: the caller holds driver.lock, so no
        other driver writes them now. A worker's temporary files are left alone: a worker
        of the earlier driver may still be writing one."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if names.temporary_stem(entry.name) in names.DRIVER_WRITTEN:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def read_manifest(self) -> Manifest | None:
        """What map the work_dir holds; None before a map was prepared in it."""
        try:
            with open(self.file("manifest.json"), encoding="utf-8") as f:
                raw = json.load(f)
            return Manifest(raw["digest"], raw["num_tasks"], raw["chunk_starts"], raw["job_name"],
                            raw.get("mode", "array"), raw.get("function_digest", ""), raw["format"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkDirMismatchError(f"work_dir {self.path}: manifest.json is damaged or was "
                                       f"not written by poolparty_raster ({exc!r})") from exc

    def write_manifest(self, manifest: Manifest) -> None:
        data = json.dumps({"format": manifest.format, "digest": manifest.digest, "num_tasks": manifest.num_tasks,
                           "chunk_starts": list(manifest.chunk_starts), "job_name": manifest.job_name,
                           "mode": manifest.mode, "function_digest": manifest.function_digest})
        atomic_write(self.file("manifest.json"), data.encode())

    # -- the worker's side -------------------------------------------------------------
    def _tasks_zip(self) -> StoredArchive:
        """tasks.zip, opened once: it never changes, and a worker in workers mode reads it
        for every chunk (its central directory has an entry per chunk: indexed in 24 bytes a
        chunk, where a ZipFile held ~500 MB for a million chunks in every worker)."""
        if self._tasks is None:
            self._tasks = StoredArchive(self.tasks_path, prefix="chunks/", suffix=".pkl")
        return self._tasks

    def close(self) -> None:
        """Close the zips held open: the driver holds no file of a work_dir it may remove (on
        NFS an open file keeps a directory from being removed)."""
        if self._tasks is not None:
            self._tasks.close()
            self._tasks = None
        for _, archive in self._archives.values():
            archive.close()
        self._archives = {}

    def load_function(self) -> Callable[[Any], Any]:
        return cloudpickle.loads(self._tasks_zip().read("function.pkl"))

    def load_tasks(self, chunk: int) -> list[Any]:
        return cloudpickle.loads(self._tasks_zip().read(f"chunks/{chunk_key(chunk)}.pkl"))

    def write_loose(self, chunk: int, kind: str, data: bytes) -> None:
        # Not durable: a loose file that a node's crash tears is read as unreadable and its
        # chunk runs again (a killed worker tears nothing: the kernel has the data), and on
        # NFS closing the file commits it to the server. An fsync a chunk would cost more
        # than a small chunk's work.
        atomic_write(self.file(loose_name(chunk, kind)), data, durable=False)

    def write_result(self, chunk: int, data: bytes, log: resultlog.ResultLog | None = None) -> None:
        """A chunk's result, which commits it: a record in the worker's result log where it
        keeps one (workers mode), else a file of its own."""
        if log is None or not log.publish(self.file(loose_name(chunk, "result")), chunk, data):
            self.write_loose(chunk, "result", data)

    # -- the driver's side -------------------------------------------------------------
    def scan(self) -> dict[int, dict[str, list[str]]]:
        """Loose worker files by chunk: ``{chunk: {"final": [kinds], "live": [file names]}}``,
        which the caller does not change (chunks whose files are of the same kinds, and none
        live, share one entry). Every collect lists the work_dir, where loose results wait for
        a reduction by the thousand: only names that came or went since the last scan are
        read, and the entry of a chunk they touch is replaced, not changed (a caller may keep
        one)."""
        names = set(os.listdir(self.path))
        changes: dict[int, list[tuple[str, bool]]] = {}
        for name, present in itertools.chain(((n, False) for n in self._listed - names),
                                             ((n, True) for n in names - self._listed)):
            parsed = parse_loose_name(name)
            if parsed is not None:
                changes.setdefault(parsed[0], []).append((name, present))
        for chunk, changed in changes.items():
            chunk_names = set(self._chunk_names(chunk))
            for name, present in changed:
                if present:
                    chunk_names.add(name)
                else:
                    chunk_names.discard(name)
            if not chunk_names:
                self._loose.pop(chunk, None)
                self._scanned.pop(chunk, None)
                continue
            ordered = tuple(sorted(chunk_names))
            if ordered == (loose_name(chunk, "result"),):
                self._loose.pop(chunk, None)
            else:
                self._loose[chunk] = ordered
            self._scanned[chunk] = _slot(ordered)
        self._listed = names
        return self._scanned

    def _chunk_names(self, chunk: int) -> tuple[str, ...]:
        """A chunk's loose names at the last scan."""
        names = self._loose.get(chunk)
        if names is not None:
            return names
        return (loose_name(chunk, "result"),) if chunk in self._scanned else ()

    def worker_captures(self, worker_token: str | None = None) -> list[str]:
        """Workers mode's live captures, of one worker or of every worker."""
        names = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                parsed = parse_worker_capture(entry.name)
                if parsed is not None and worker_token in (None, parsed[0]):
                    names.append(entry.name)
        return names

    def finished_chunks(self) -> set[int]:
        """Chunks with a result, archived or loose."""
        return self.chunks_with("result")

    def chunks_with(self, kind: str) -> set[int]:
        """Chunks with an output of this kind, archived or loose."""
        loose = {c for c, f in self.scan().items() if kind in f["final"]}
        return self.archived_chunks(kind) | loose

    def archived_chunks(self, kind: str = "result") -> set[int]:
        """Chunks whose output of this kind is already in its archive. Opened and closed here,
        not kept like the driver's ``_archive``: workers ask this too, and an archive a worker
        held open would stay on NFS as a silly-renamed copy after every reduce."""
        try:
            return numbered_entries(self.archive_path(kind))
        except FileNotFoundError:
            return set()

    def read_output(self, chunk: int, kind: str) -> bytes | None:
        """A chunk's output of one kind, loose or archived; None when there is none."""
        try:
            with self._open_loose(loose_name(chunk, kind)) as f:
                return f.read()
        except FileNotFoundError:
            pass
        archive = self._archive(kind)
        try:
            return archive.read(chunk_key(chunk)) if archive is not None else None
        except KeyError:
            return None

    def _archive(self, kind: str) -> StoredArchive | None:
        """The archive of this kind, opened once per version: the driver reads a chunk's
        outputs one by one, and parsing the central directory for each would cost time
        growing with the square of the chunk count. A reduce renames a new version into
        place, which the file's inode, mtime and size tell. Its index holds 8 bytes a chunk
        (a ZipFile held ~450 bytes an entry: 450 MB for a million archived chunks)."""
        path = self.archive_path(kind)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = self._archives.get(kind)
        if cached is None or cached[0] != version:
            if cached is not None:
                cached[1].close()
            try:
                opened = StoredArchive(path)
            except FileNotFoundError:  # replaced and removed meanwhile: not there now
                self._archives.pop(kind, None)
                return None
            cached = self._archives[kind] = (version, opened)
        return cached[1]

    def discard_loose(self, chunk: int, kinds: tuple[str, ...] = ARCHIVE_KINDS) -> None:
        """Remove a chunk's loose outputs of these kinds (unreadable ones, a late duplicate's,
        or an exception file that the chunk's result disowns)."""
        for kind in kinds:
            try:
                os.unlink(self.file(loose_name(chunk, kind)))
            except FileNotFoundError:
                pass

    def reduce(self, chunks: dict[int, list[str]], lost_captures: dict[str, str] | None = None) -> int:
        """Move finished chunks' loose files (``{chunk: kinds}``, as the scan saw them) into
        the archives, then delete them.

        Each archive is rewritten under a temporary name and renamed, so it is valid at every
        instant; loose files are deleted only after every archive holding them is in place.
        The results archive goes last: a chunk counts as archived once its result is, so a
        driver killed between two archives leaves it loose, to be reduced again on resume,
        rather than archived with its captures still loose (a late duplicate's, to a resumed
        driver, which would discard them).
        ``lost_captures`` maps live capture files of dead attempts to their archive entry name.
        Returns the number of loose files removed.
        """
        lost_captures = lost_captures or {}
        # {entry: loose name} of each kind, spelled as they are read: a reduce may move half
        # a map's chunks, and two strings and a dict slot each were ~200 bytes a chunk.
        by_kind: dict[str, list[int]] = {k: [] for k in ARCHIVE_KINDS}
        for chunk in sorted(chunks):
            for kind in chunks[chunk]:
                by_kind[kind].append(chunk)
        captures: dict[str, dict[str, str]] = {k: {} for k in ARCHIVE_KINDS}
        for capture, entry in lost_captures.items():
            captures[capture_stream(capture)][entry] = capture
        additions = {k: _LooseEntries(by_kind[k], k, captures[k]) for k in ARCHIVE_KINDS}
        for kind in sorted(additions, key=lambda kind: kind == "result"):
            if additions[kind]:
                self._extend_archive(kind, additions[kind])
        removed = 0
        for entries in additions.values():
            for name in entries.values():
                try:
                    os.unlink(self.file(name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def remove_result_logs(self) -> None:
        """Remove the result logs' own names that workers killed before their end left: every
        result linked to them is archived when the driver calls this."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if resultlog.is_log_name(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _open_loose(self, name: str) -> IO[bytes]:
        """A loose file's content: a result that is a link to a worker's result log reads
        as its chunk's record alone."""
        fd = os.open(self.file(name), os.O_RDONLY)
        try:
            parsed = parse_loose_name(name)
            if (parsed is None or parsed[1] != "result"
                    or not resultlog.is_log(head := os.pread(fd, resultlog.HEAD_SIZE, 0))):
                return os.fdopen(fd, "rb")  # which closes the fd from here on
            record = self._logs.read(fd, parsed[0], name, head)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return io.BytesIO(record)

    def _extend_archive(self, kind: str, entries: dict[str, str]) -> None:
        extend_archive(self.archive_path(kind), entries, self._open_loose,
                       may_vanish=kind in ("stdout", "stderr"))

    def space_error(self) -> OSError | None:
        """The error a write of SPACE_PROBE_BYTES into the work_dir meets now (ENOSPC: the disk
        is full; EDQUOT: the user's quota is used up), None when it succeeds. Asked when
        chunks die: a worker that cannot write can say so nowhere in the work_dir, since its
        stderr file is on the same full disk."""
        try:
            atomic_write(self.file("space.probe"), bytes(SPACE_PROBE_BYTES), durable=False)
            os.unlink(self.file("space.probe"))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return exc
        return None

    # -- records -----------------------------------------------------------------------
    def log(self, event: str, **fields: Any) -> None:
        """Append one event to log.jsonl. A reader skips a torn last line. The log is a
        record, not state: on a full disk or quota its line is lost, not the map (the engine
        says what filled, and nothing else it writes is skipped)."""
        try:
            append_line(self.file("log.jsonl"), {"time": time.time(), "event": event, **fields})
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise

    def read_log(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.file("log.jsonl")))

    def read_jobs(self) -> list[dict[str, Any]]:
        """The job records in submission order; a later line for a job id updates it."""
        jobs: dict[str, dict[str, Any]] = {}
        for record in read_jsonl(self.file("jobs.jsonl")):
            jobs[record["job_id"]] = record
        return list(jobs.values())

    def forget_jobs(self) -> None:
        """Empty the job records (their jobs were cancelled: nothing is to reattach)."""
        atomic_write(self.file("jobs.jsonl"), b"")

    def append_job(self, record: dict[str, Any]) -> None:
        """Store a job record the moment the scheduler accepted it (append-only, like the log:
        one rewrite per job would cost O(n^2) for a map of n single jobs)."""
        append_line(self.file("jobs.jsonl"), record)


def dump_results(values: list[bytes | None], errors: list[dict[str, Any]]) -> bytes:
    """A chunk's result file: each task's pickled value (None where it raised) and the
    records of the exceptions raised. They travel together because the result is the commit:
    an ``.exception`` file (kept for ``inspect`` and the archive) may come from another run of
    the chunk, one killed before its result, or a straggler's second run."""
    return pickle.dumps((values, errors), protocol=5)


def load_results(data: bytes) -> tuple[list[bytes | None], list[dict[str, Any]]]:
    """(pickled values, exception records) of a chunk's result file; an error here means
    the file is damaged (each value is unpickled on its own: outcome.loaded_values)."""
    return pickle.loads(data)


def dump_exceptions(records: list[dict[str, Any]]) -> bytes:
    return pickle.dumps(records, protocol=5)


def load_exceptions(data: bytes) -> list[dict[str, Any]]:
    return pickle.loads(data)


def tail_lines(data: bytes, count: int = 20) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()[-count:]

