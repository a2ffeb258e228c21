"""Tracebacks of functions that travel by value (defined in ``__main__``, lambdas, a notebook's
cells) with their file and source lines, as multiprocessing shows them.

cloudpickle renames the file of every code object it pickles ``<dynamic-code>`` (its payload
then does not depend on where the function was defined), so a task's traceback read
``File "<dynamic-code>", line 8`` with no source line. :class:`WithSource` pickles the map's
function keeping each code object's file name, and sends along the source lines each one
spans: where the file cannot be read on the node (a script outside the shared filesystem, a
notebook's cell), they are put into ``linecache`` there, which is where tracebacks read them.
Only a function's own lines travel, so an edit elsewhere in the file does not change what a
resumed map compares (the work_dir's manifest keeps a digest of the pickled function).
"""
from __future__ import annotations

import io
import linecache
import os
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

# cloudpickle's reducer of code objects, which this module reuses but for the file name.
# Private to cloudpickle: without it, functions travel as cloudpickle sends them.
_code_reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)


class _FilenameKeepingPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO):
        super().__init__(file)
        self.lines: dict[str, dict[int, str]] = {}  # file name -> {line number: line}

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType) and _code_reduce is not None:
            self._keep_lines(obj)
            constructor, args = _code_reduce(obj)
            return _code_with_filename, (constructor, args, obj.co_filename)
        return super().reducer_override(obj)

    def _keep_lines(self, code: types.CodeType) -> None:
        source = linecache.getlines(code.co_filename)
        if not source:  # "<stdin>", "<string>": nothing to show anyway
            return
        numbers = [n for _, _, n in code.co_lines() if n is not None] + [code.co_firstlineno]
        kept = self.lines.setdefault(code.co_filename, {})
        for number in range(min(numbers), min(max(numbers), len(source)) + 1):
            kept[number] = source[number - 1]


def _code_with_filename(constructor: Callable[..., types.CodeType], args: tuple[Any, ...],
                        filename: str) -> types.CodeType:
    return constructor(*args).replace(co_filename=filename)


def _loaded(payload: bytes, lines: dict[str, dict[int, str]]) -> Any:
    """On the node: the function, with the source lines of files this node cannot read."""
    for filename, numbered in lines.items():
        if filename in linecache.cache or os.path.exists(filename):
            continue
        source = [""] * max(numbered)
        for number, line in numbered.items():
            source[number - 1] = line
        # No modification time: linecache.checkcache then never drops the entry.
        linecache.cache[filename] = (sum(map(len, source)), None, source, filename)
    return cloudpickle.loads(payload)


class WithSource:
    """A map's function as it is pickled: unpickled, it is the function itself (no frame of
    this module's in a task's traceback), with its code's file names kept."""

    def __init__(self, func: Callable[[Any], Any]):
        self.func = func

    def __reduce__(self) -> tuple[Any, ...]:
        buffer = io.BytesIO()
        pickler = _FilenameKeepingPickler(buffer)
        pickler.dump(self.func)
        return _loaded, (buffer.getvalue(), pickler.lines)
