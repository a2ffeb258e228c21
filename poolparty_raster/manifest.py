"""manifest.json: what map a work_dir holds (the digest of its function and tasks, its chunks'
boundaries, its job name and mode), written last when the driver prepares the work_dir."""
from __future__ import annotations

import array
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from poolparty_raster.errors import WorkDirMismatchError
from poolparty_raster.files import atomic_write


def function_digest(func_bytes: bytes) -> str:
    return hashlib.sha256(func_bytes).hexdigest()


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
    slots_per_worker: int = 1  # workers mode: worker loops each job runs at once (slots.py)

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
    if isinstance(starts, range):
        return starts
    packed = starts if isinstance(starts, array.array) else array.array("q", starts)
    if len(packed) == 1:
        return range(packed[0], packed[0] + 1)
    step = packed[1] - packed[0] if len(packed) > 1 else 0
    if step > 0:
        spaced = range(packed[0], packed[0] + len(packed) * step, step)
        if packed == array.array("q", spaced):
            return spaced
    return packed


def read_manifest(path: str, work_dir: str) -> Manifest | None:
    """The manifest at ``path``; None where there is none. A symbolic link under its name is
    refused: nothing in a work_dir is read through one."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), encoding="utf-8") as f:
            raw = json.load(f)
        return Manifest(raw["digest"], raw["num_tasks"], raw["chunk_starts"], raw["job_name"],
                        raw.get("mode", "array"), raw.get("function_digest", ""), raw["format"],
                        raw.get("slots_per_worker", 1))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError) as exc:  # OSError: ELOOP, a link
        raise WorkDirMismatchError(f"work_dir {work_dir}: manifest.json is damaged or was "
                                   f"not written by poolparty_raster ({exc!r})") from exc


def write_manifest(path: str, manifest: Manifest) -> None:
    data = json.dumps({"format": manifest.format, "digest": manifest.digest,
                       "num_tasks": manifest.num_tasks, "chunk_starts": [],
                       "job_name": manifest.job_name, "mode": manifest.mode,
                       "function_digest": manifest.function_digest,
                       "slots_per_worker": manifest.slots_per_worker})
    # The starts spelled a block at a time: a list of a million chunks' is 36 MB.
    starts = manifest.chunk_starts
    blocks = (",".join(map(str, starts[i:i + 65536])) for i in range(0, len(starts), 65536))
    head, tail = data.split('"chunk_starts": []', 1)
    atomic_write(path, f'{head}"chunk_starts": [{",".join(blocks)}]{tail}'.encode())
