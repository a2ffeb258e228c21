"""tasks.zip, the map's function and tasks, written once by the driver before anything runs:
``function.pkl`` and one ``chunks/NNNNNN.pkl`` per chunk (the pickled list of its tasks),
STORED. Workers read it through storedarchive.StoredArchive (WorkDir.load_tasks)."""
from __future__ import annotations

import array
import hashlib
import os
import pickle
import tempfile
from typing import Any

import cloudpickle

from poolparty_raster.files import ForwardWriter
from poolparty_raster.names import chunk_key
from poolparty_raster.storedzip import StoredZipWriter


class TasksWriter:
    """Streams the pickled function and task chunks into ``tasks.zip`` under a temporary name
    (``.tasks.<random>.tmp``, which names.temporary_stem knows), holding no object per chunk:
    a ZipFile's ~450 bytes an entry were 450 MB for a million chunks, the driver's peak."""

    def __init__(self, directory: str, func_bytes: bytes):
        fd, self.tmp_path = tempfile.mkstemp(prefix=".tasks.", suffix=".tmp", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._stream = ForwardWriter(self._file)
        self._zip = StoredZipWriter(self._stream)
        self._hash = hashlib.sha256(func_bytes)
        self._zip.writestr("function.pkl", func_bytes)
        self.chunk_starts = array.array("q")  # 8 bytes a chunk, not a list's 36
        self.num_tasks = 0

    def add_chunk(self, tasks: list[Any]) -> None:
        data = _dumps(tasks)
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
        self._zip.discard()
        self._file.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


# Values that pickle and cloudpickle spell alike (cloudpickle's own code runs only for what
# pickle would name by reference: functions, classes), the tasks of most maps: pickled by
# pickle, a tenth of cloudpickle's cost for a chunk of one task (the same bytes, the same
# digest).
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _dumps(tasks: list[Any]) -> bytes:
    if all(type(task) in _PLAIN or (type(task) is tuple and all(type(x) in _PLAIN for x in task))
           for task in tasks):
        return pickle.dumps(tasks, protocol=cloudpickle.DEFAULT_PROTOCOL)
    return cloudpickle.dumps(tasks)
