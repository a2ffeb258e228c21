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


def is_preparation_leftover(name: str) -> bool:
    """What a driver killed while preparing a map leaves before manifest.json exists."""
    return name in ("driver.lock", "log.jsonl", "scheduler.log", "script.py", "tasks.zip") or (
        name.startswith(".") and name.endswith(".tmp"))


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


@functools.lru_cache(maxsize=1 << 16)  # every scan parses every loose name again
def parse_loose_name(name: str) -> tuple[int, str, bool] | None:
    """``chunk-000012.result`` -> (12, "result", False); a live capture -> (12, "stderr", True)."""
    if not name.startswith(_CHUNK_PREFIX):
        return None
    parts = name[len(_CHUNK_PREFIX):].split(".")
    if len(parts) < 2 or not parts[0].isdigit() or parts[1] not in ARCHIVE_KINDS:
        return None
    live = name.endswith(_LIVE_SUFFIX)
    if not live and len(parts) != 2:
        return None
    return int(parts[0]), parts[1], live


def capture_stream(name: str) -> str:
    """"stdout" or "stderr": the stream of a live capture, a chunk's or a worker's."""
    parsed = parse_loose_name(name)
    if parsed is not None and parsed[2]:
        return parsed[1]
    worker = parse_worker_capture(name)
    if worker is None:
        raise ValueError(f"{name!r} is not a live capture")
    return worker[1]
