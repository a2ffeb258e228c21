"""The work_dir's file names: what each loose file of a chunk, and each live capture, is called,
and how a name is read back. The one place that spells them (workdir.py reads and writes the
files)."""
from __future__ import annotations

import functools

from poolparty_raster import claims

ARCHIVE_KINDS = ("result", "exception", "stdout", "stderr")
_LIVE_SUFFIX = ".part"
_CHUNK_PREFIX = "chunk-"
_WORKER_CAPTURE_PREFIX = "capture."
RESULT_LOG_PREFIX = "results."  # a worker's result log (resultlog.py)


MARK_NAME = "poolparty_raster.mark"  # ownership.py: what makes a directory a work_dir of ours
FEATURES_PROBE_NAME = "features.probe"  # fsfeatures.py's temporary files are named after it
# The work_dir's files of fixed name (workdir.py), its claims directory (claims.py) and the
# name TasksWriter's temporary file starts with.
FIXED_NAMES = frozenset({
    MARK_NAME, "manifest.json", "tasks.zip", "script.py", "log.jsonl", "jobs.jsonl",
    "scheduler.log", "driver.lock", "claims", "tasks.results.zip", "tasks.exceptions.zip",
    "tasks.stdout.zip", "tasks.stderr.zip", "space.probe", FEATURES_PROBE_NAME,
    "condor.submit"})
# Files only the driver writes (it holds driver.lock meanwhile): a temporary file of one of
# these is a killed driver's leftover, which the next driver removes.
DRIVER_WRITTEN = frozenset({"manifest.json", "tasks", "jobs.jsonl", "tasks.results.zip",
                            "tasks.exceptions.zip", "tasks.stdout.zip", "tasks.stderr.zip"})
_TEMPORARY_SUFFIX = ".tmp"


def temporary_stem(name: str) -> str | None:
    """The name a temporary file is written for (files.atomic_write and TasksWriter name
    them ``.<name>.<random>.tmp``): ``.manifest.json.k2j4x9a1.tmp`` -> "manifest.json"."""
    if not (name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX)):
        return None
    stem, dot, _random = name[1:-len(_TEMPORARY_SUFFIX)].rpartition(".")
    return stem if dot and stem else None


def is_protocol_name(name: str) -> bool:
    """Whether the work_dir protocol gives a file this name: the only names that a work_dir's
    removal deletes."""
    stem = temporary_stem(name)
    if stem is not None:
        return stem == "tasks" or is_protocol_name(stem)
    return (name in FIXED_NAMES or parse_loose_name(name) is not None
            or parse_batch_name(name) is not None or parse_worker_capture(name) is not None
            or name.startswith(RESULT_LOG_PREFIX))


def chunk_key(chunk: int) -> str:
    return f"{chunk:06d}"


def loose_name(chunk: int, kind: str) -> str:
    return f"{_CHUNK_PREFIX}{chunk_key(chunk)}.{kind}"


def live_capture_name(chunk: int, stream: str) -> str:
    """Name of the file a running attempt streams its stdout or stderr into."""
    return f"{_CHUNK_PREFIX}{chunk_key(chunk)}.{stream}.{claims.process_token()}{_LIVE_SUFFIX}"


def worker_capture_name(worker_token: str, stream: str) -> str:
    """Workers mode: the file a worker streams stdout or stderr into, whichever chunk it runs
    (renaming it for each chunk cost two renames a chunk). It belongs to the chunk that the
    worker's claim names (the claim holds the same token); a chunk's output moves to the
    chunk's own file when it finishes."""
    return f"{_WORKER_CAPTURE_PREFIX}{worker_token}.{stream}{_LIVE_SUFFIX}"


def parse_worker_capture(name: str) -> tuple[str, str] | None:
    """``capture.<host>-<pid>-<ns>.stderr.part`` -> ("<host>-<pid>-<ns>", "stderr")."""
    if not (name.startswith(_WORKER_CAPTURE_PREFIX) and name.endswith(_LIVE_SUFFIX)):
        return None
    token, _, stream = name[len(_WORKER_CAPTURE_PREFIX):-len(_LIVE_SUFFIX)].rpartition(".")
    return (token, stream) if token and stream in ("stdout", "stderr") else None


_KINDS = {kind: kind for kind in ARCHIVE_KINDS}


_RESULT_SUFFIX = ".result"
_BATCH_MARK = "+"
assert len(_CHUNK_PREFIX) == 6 and len(_RESULT_SUFFIX) == 7


def result_chunk(name: str) -> int | None:
    """The chunk of a result's loose name (``chunk-000012.result`` -> 12), else None: the name
    that a map has one of for every chunk, told apart in a few string operations."""
    if name.endswith(_RESULT_SUFFIX) and name.startswith(_CHUNK_PREFIX):
        key = name[6:-7]  # between the two
        if key.isdigit():
            return int(key)
    return None


def batch_result_name(first: int, count: int) -> str:
    """Workers mode: the one name that commits the results of chunks ``first`` to ``first +
    count - 1``, records of a worker's result log (resultlog.py): ``chunk-000012+5.result``.
    It is spelled as a chunk's result is, so that a listing picks it out in the same test,
    and says its chunks itself, so that no read is needed to count them done."""
    return f"{_CHUNK_PREFIX}{chunk_key(first)}{_BATCH_MARK}{count}{_RESULT_SUFFIX}"


def parse_batch_key(key: str) -> tuple[int, int] | None:
    """``"000012+5"`` (a batch name between its prefix and suffix) -> (12, 5), else None."""
    first, mark, count = key.partition(_BATCH_MARK)
    if mark and first.isdigit() and count.isdigit() and int(count) > 1:
        return int(first), int(count)
    return None


def parse_batch_name(name: str) -> tuple[int, int] | None:
    """``chunk-000012+5.result`` -> (12, 5): the first chunk and how many; else None."""
    if name.endswith(_RESULT_SUFFIX) and name.startswith(_CHUNK_PREFIX):
        return parse_batch_key(name[6:-7])
    return None


def parse_loose_name(name: str) -> tuple[int, str, bool] | None:
    """``chunk-000012.result`` -> (12, "result", False); a live capture -> (12, "stderr", True).
    The kind is one of ARCHIVE_KINDS itself, not a copy (a scan keeps thousands)."""
    chunk = result_chunk(name)
    if chunk is not None:
        return chunk, ARCHIVE_KINDS[0], False
    return _parse_other_name(name)


# A loose name is parsed when it appears in a scan, when its chunk's outputs are read, and
# when it is gone: the first two follow each other closely. A cache entry holds the name and
# its parse (~250 bytes), so it stays small: 65,536 of them were 16 MB of the driver's.
@functools.lru_cache(maxsize=4096)
def _parse_other_name(name: str) -> tuple[int, str, bool] | None:
    if not name.startswith(_CHUNK_PREFIX):
        return None
    parts = name[len(_CHUNK_PREFIX):].split(".")
    kind = _KINDS.get(parts[1]) if len(parts) >= 2 else None
    if kind is None or not parts[0].isdigit():
        return None
    live = name.endswith(_LIVE_SUFFIX)
    if not live and len(parts) != 2:
        return None
    return int(parts[0]), kind, live


def capture_stream(name: str) -> str:
    """"stdout" or "stderr": the stream of a live capture, a chunk's or a worker's."""
    parsed = parse_loose_name(name)
    if parsed is not None and parsed[2]:
        return parsed[1]
    worker = parse_worker_capture(name)
    if worker is None:
        raise ValueError(f"{name!r} is not a live capture")
    return worker[1]
