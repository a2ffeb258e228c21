"""The work_dir protocol: the only code that reads and writes the work_dir's files (their
names are spelled in names.py; the atomic writes are in files.py, the archives in storedzip.py
and storedarchive.py, manifest.json in manifest.py, tasks.zip in taskszip.py, the driver's view
of the loose files in loose.py, a result file's encoding in outcome.py).

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
    chunk-NNNNNN+K.result workers mode: the results of K chunks, committed with one name
                          (read, kept for the reduce and removed by looseresults.py)
    results.<worker>      workers mode: a worker's result log; its chunks' results are hard
                          links to it (resultlog.py)
    capture.<worker>.*.part  workers mode: a worker's live stdout and stderr, kept from chunk
                          to chunk while empty (a chunk's output moves to chunk-NNNNNN.stderr)

A worker writes ``.stdout``/``.stderr``/``.exception`` first and ``.result`` last, each under a
temporary name renamed into place (a result in workers mode: a hard link to its complete record
in the worker's result log): a chunk is finished exactly when its result exists.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import cloudpickle

from poolparty_raster import names, ownership, resultlog
from poolparty_raster.claims import Claims
from poolparty_raster.files import append_line, atomic_write, read_jsonl
from poolparty_raster.loose import LooseEntries, LooseView
from poolparty_raster.looseresults import LooseResults
from poolparty_raster.manifest import Manifest, read_manifest, write_manifest
from poolparty_raster.names import (ARCHIVE_KINDS, capture_stream, chunk_key, loose_name,
                                    parse_worker_capture, result_chunk)
from poolparty_raster.storedarchive import ArchiveIndex, StoredArchive
from poolparty_raster.storedzip import extend_archive, file_version, numbered_entries

_ARCHIVE_NAMES = {"result": "tasks.results.zip", "exception": "tasks.exceptions.zip",
                  "stdout": "tasks.stdout.zip", "stderr": "tasks.stderr.zip"}
SPACE_PROBE_BYTES = 1 << 20  # what a result of one chunk may need, at least


class WorkDir:
    """One map's directory on the shared filesystem."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._tasks: StoredArchive | None = None
        # kind -> (which version of the file: inode, mtime, size; the archive opened)
        self._archives: dict[str, tuple[tuple[int, int, int], StoredArchive]] = {}
        # kind -> where the archive's entries are: parsed once, then kept up to date by each
        # reduce, which only appends (20 bytes a chunk; parsing a million entries costs 1 s).
        self._indexes: dict[str, ArchiveIndex] = {}
        self.claims = Claims(self.file("claims"))  # workers mode: who runs which chunk
        self._view = LooseView()  # the loose files at the last scan
        self._results = LooseResults(self.path, self._view)

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
        return read_manifest(self.file("manifest.json"), self.path)

    def write_manifest(self, manifest: Manifest) -> None:
        write_manifest(self.file("manifest.json"), manifest)

    # -- the worker's side -------------------------------------------------------------
    def _tasks_zip(self) -> StoredArchive:
        """tasks.zip, opened once: it never changes, and a worker in workers mode reads it
        for every chunk (its central directory has an entry per chunk: indexed in 24 bytes a
        chunk, where a ZipFile held ~500 MB for a million chunks in every worker)."""
        if self._tasks is None:
            self._tasks = StoredArchive(self.tasks_path, prefix="chunks/", suffix=".pkl")
        return self._tasks

    def use_tasks(self, tasks: StoredArchive) -> None:
        """Read the function and tasks through ``tasks``, tasks.zip opened already (by
        LocalPool's fork server for its children: forkmaps.py)."""
        self._tasks = tasks

    def close(self) -> None:
        """Close the zips held open: the driver holds no file of a work_dir it may remove (on
        NFS an open file keeps a directory from being removed)."""
        if self._tasks is not None:
            self._tasks.close()
            self._tasks = None
        for _, archive in self._archives.values():
            archive.close()
        self._archives = {}
        self._results.close()

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

    def write_result(self, chunk: int, data: bytes, log: resultlog.Publisher | None = None) -> None:
        """A chunk's result, which commits it: a record in the worker's result log where it
        keeps one (workers mode) or through its launcher (LocalPool's fork server commits it
        into a log of its own: forkmaps.py), else a file of its own."""
        if log is None or not log.publish(self.file(loose_name(chunk, "result")), chunk, data):
            self.write_loose(chunk, "result", data)

    # -- the driver's side -------------------------------------------------------------
    def scan(self) -> Mapping[int, dict[str, list[str]]]:
        """Loose worker files by chunk (loose.LooseView.update): ``{chunk: {"final": [kinds],
        "live": [file names]}}``, which the caller does not change, valid until the next scan.
        The work_dir is listed name by name: a driver that fell behind may find a million
        results waiting, and a list of them all was ~80 MB."""
        with os.scandir(self.path) as entries:
            return self._view.update(entry.name for entry in entries)

    def scan_changed(self) -> tuple[Mapping[int, dict[str, list[str]]], Iterator[int]]:
        """scan(), and the chunks whose entry changed since the last scan_changed (or was
        made), ascending: a collect looks at those alone."""
        scanned = self.scan()
        return scanned, self._view.take_changed()

    def live_captures(self) -> dict[int, list[str]]:
        """The live captures of each chunk that has any, at the last scan."""
        return self._view.live_captures()

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
        """A chunk's output of one kind, loose or archived; None when there is none. A
        result is looked up under the name the last scan saw holding it (a batch's, in
        workers mode); one found nowhere has the work_dir scanned once more."""
        for rescanned in (False, True):
            try:
                if kind == "result":
                    return self._results.read(chunk)
                with open(self.file(loose_name(chunk, kind)), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                pass
            archive = self._archive(kind)
            if archive is not None:
                try:
                    return archive.read(chunk_key(chunk))
                except KeyError:
                    pass
            if kind != "result" or rescanned:
                return None
            self.scan()  # a batch committed since the last scan (or before any)
        return None

    def _archive(self, kind: str) -> StoredArchive | None:
        """The archive of this kind, opened once per version: the driver reads a chunk's
        outputs one by one, and parsing the central directory for each would cost time
        growing with the square of the chunk count. A reduce renames a new version into
        place, which the file's inode, mtime and size tell; the reduce gave the index what it
        appended, so the new version is not parsed again. The index holds 20 bytes a chunk (a
        ZipFile held ~450 bytes an entry: 450 MB for a million archived chunks)."""
        path = self.archive_path(kind)
        try:
            version = file_version(os.stat(path))
        except FileNotFoundError:
            return None
        cached = self._archives.get(kind)
        if cached is None or cached[0] != version:
            if cached is not None:
                cached[1].close()
            try:
                opened = StoredArchive(path, index=self._index(kind))
            except FileNotFoundError:  # replaced and removed meanwhile: not there now
                self._archives.pop(kind, None)
                return None
            cached = self._archives[kind] = (version, opened)
        return cached[1]

    def discard_loose(self, chunk: int, kinds: tuple[str, ...] = ARCHIVE_KINDS) -> None:
        """Remove a chunk's loose outputs of these kinds (unreadable ones, a late duplicate's,
        or an exception file that the chunk's result disowns)."""
        if "result" in kinds:
            self._results.remove([chunk])
        for kind in kinds:
            if kind == "result":
                continue
            try:
                os.unlink(self.file(loose_name(chunk, kind)))
            except FileNotFoundError:
                pass

    def adopt_result(self, chunk: int) -> bool:
        """Workers mode: commit the chunk's complete record that a dead worker left in its
        result log unlinked (looseresults.LooseResults.adopt); True where it had one."""
        return self._results.adopt(chunk)

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
        additions = {k: LooseEntries(by_kind[k], k, captures[k]) for k in ARCHIVE_KINDS}
        for kind in sorted(additions, key=lambda kind: kind == "result"):
            if additions[kind]:
                self._extend_archive(kind, additions[kind])
        removed = self._results.remove(by_kind["result"])
        for kind, entries in additions.items():
            names = entries.others.values() if kind == "result" else entries.values()
            for name in names:
                try:
                    os.unlink(self.file(name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def remove_result_logs(self) -> None:
        """Remove the result logs' own names that workers killed before their end left: every
        result linked to them is archived when the driver calls this."""
        self._results.close()
        with os.scandir(self.path) as entries:
            for entry in entries:
                if resultlog.is_log_name(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _open_loose(self, name: str) -> IO[bytes]:
        return open(self.file(name), "rb")

    def _index(self, kind: str) -> ArchiveIndex:
        index = self._indexes.get(kind)
        if index is None:
            index = self._indexes[kind] = ArchiveIndex()
        return index

    def _extend_archive(self, kind: str, entries: dict[str, str]) -> None:
        cached = self._archives.pop(kind, None)  # its index is about to move on
        if cached is not None:
            cached[1].close()
        extend_archive(self.archive_path(kind), entries,
                       self._open_result if kind == "result" else self._open_loose,
                       may_vanish=kind in ("stdout", "stderr"), index=self._index(kind))

    def _open_result(self, name: str) -> IO[bytes] | bytes:
        """A loose result for its archive (LooseEntries spells it by the chunk's own name;
        the result may be under its batch's)."""
        chunk = result_chunk(name)
        return self._results.for_archive(chunk) if chunk is not None else self._open_loose(name)

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


def tail_lines(data: bytes, count: int = 20) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()[-count:]

