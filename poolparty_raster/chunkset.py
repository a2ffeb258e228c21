"""Sets and maps of a map's chunk numbers, a byte a chunk: the driver's finished and archived
chunks, and the kinds of the loose outputs of those not reduced yet.

A set of ints costs ~60 bytes a member (the int and its slot): 120 MB for a map of a million
chunks finished and archived. Here membership is a byte of a bytearray as long as the map,
and the members, or the chunks missing from the set, are found with ``bytearray.find``
(memchr), a million bytes in well under a millisecond.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, MutableMapping, MutableSet


class ChunkSet(MutableSet[int]):
    """Chunk numbers ``0 <= chunk < size``; a number outside that range is never a member,
    and adding one raises IndexError."""

    __slots__ = ("_flags", "_len")

    def __init__(self, size: int, chunks: Iterable[int] = ()):
        self._flags = bytearray(size)
        self._len = 0
        for chunk in chunks:
            if 0 <= chunk < size:
                self.add(chunk)

    @property
    def size(self) -> int:
        return len(self._flags)

    def __contains__(self, chunk: object) -> bool:
        try:
            return chunk >= 0 and self._flags[chunk] == 1  # type: ignore[operator,index]
        except (IndexError, TypeError):
            return False

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        """The members in ascending order."""
        return self._positions(1)

    def missing(self) -> Iterator[int]:
        """The chunks of ``range(size)`` that are not members, in ascending order."""
        return self._positions(0)

    def first_missing(self, start: int = 0) -> int:
        """The first chunk from ``start`` on that is not a member; ``size`` when none is."""
        found = self._flags.find(0, start)
        return len(self._flags) if found < 0 else found

    def _positions(self, value: int) -> Iterator[int]:
        flags = self._flags
        at = flags.find(value)
        while at >= 0:
            yield at
            at = flags.find(value, at + 1)

    def add(self, chunk: int) -> None:
        if chunk < 0:
            raise IndexError(f"chunk {chunk} is not of this map")
        if not self._flags[chunk]:
            self._flags[chunk] = 1
            self._len += 1

    def discard(self, chunk: int) -> None:
        if chunk in self:
            self._flags[chunk] = 0
            self._len -= 1

    def copy(self) -> ChunkSet:
        other = ChunkSet(0)
        other._flags, other._len = bytearray(self._flags), self._len
        return other

    def __repr__(self) -> str:
        return f"ChunkSet({self.size}, {len(self)} members)"


class ChunkKinds(MutableMapping[int, list[str]]):
    """``{chunk: kinds}`` (a chunk's loose outputs) where the chunks whose kinds equal
    ``common`` (a result alone, nearly all of them) are a byte each and share that list:
    a dict held ~100 bytes a chunk, and a driver that fell behind its workers may hold a
    million chunks found finished and not yet taken."""

    def __init__(self, size: int, common: list[str]):
        self._common = common
        self._flags = ChunkSet(size)
        self._others: dict[int, list[str]] = {}

    def __getitem__(self, chunk: int) -> list[str]:
        kinds = self._others.get(chunk)
        if kinds is not None:
            return kinds
        if chunk in self._flags:
            return self._common
        raise KeyError(chunk)

    def __setitem__(self, chunk: int, kinds: list[str]) -> None:
        if kinds == self._common and 0 <= chunk < self._flags.size:
            self._others.pop(chunk, None)
            self._flags.add(chunk)
        else:
            self._flags.discard(chunk)
            self._others[chunk] = kinds

    def __delitem__(self, chunk: int) -> None:
        if chunk in self._others:
            del self._others[chunk]
        elif chunk in self._flags:
            self._flags.discard(chunk)
        else:
            raise KeyError(chunk)

    def __contains__(self, chunk: object) -> bool:
        return chunk in self._others or chunk in self._flags

    def __iter__(self) -> Iterator[int]:
        """The chunks in ascending order."""
        return heapq.merge(iter(self._flags), sorted(self._others))

    def __len__(self) -> int:
        return len(self._flags) + len(self._others)

    def without(self, chunks: Iterable[int]) -> ChunkKinds:
        """A copy without these chunks."""
        other = ChunkKinds(0, self._common)
        other._flags = self._flags.copy()
        other._others = dict(self._others)
        for chunk in chunks:
            other._flags.discard(chunk)
            other._others.pop(chunk, None)
        return other
