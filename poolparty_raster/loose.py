"""The driver's view of a work_dir's loose files (a worker's outputs until the driver reduces
them into the archives), kept from one scan to the next, and what a reduce archives of them.
A batch name (``chunk-NNNNNN+K.result``: one name for the results of K chunks, workers mode)
counts as a result name of each of its chunks until that chunk's result is archived or
discarded (drop_result)."""
from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Iterator, Mapping

from poolparty_raster.names import (RESULT_LOG_PREFIX, batch_result_name, chunk_key, loose_name,
                                    parse_batch_key, parse_loose_name)


# A result-only chunk up to this number is a byte of LooseView's arrays; one past it (a map of
# more chunks, or a stray name) is held as a chunk with other files is.
BITMAP_CHUNKS = 1 << 24


class LooseView:
    """The loose files at the last scan, by chunk. Every collect lists the work_dir, where
    loose results wait by the thousand (for a reduction, or for a driver that fell behind
    its workers: a million of them, if it did for a map of a million chunks). Most chunks
    have one loose file, their result: those are a byte each here (1 where the last listing
    showed the result), so that what the driver holds does not grow with what waits on
    disk. The names of chunks with other files are kept by chunk (sorted), and their entries
    of the view are replaced, not changed, when a scan sees their files change (a caller may
    keep one). The listing is read name by name, not as a list of every name."""

    def __init__(self) -> None:
        self._results = bytearray()  # by chunk: 1 where the last listing had its result alone
        self._other_names: set[str] = set()  # the other loose names of the last listing
        self._others: dict[int, tuple[str, ...]] = {}  # chunks with other names: all of them
        self._slots: dict[int, dict[str, list[str]]] = {}  # and their entries of the view
        self._changed = bytearray()  # by chunk: 1 where its entry was set since take_changed
        self._changed_past: set[int] = set()  # those past BITMAP_CHUNKS
        # Batch names (workers mode: one name commits a run's results) at the last listing,
        # first chunk -> count; each batch's chunks archived or discarded since (they count
        # no more, while the name stays for the others); the chunks that have a result name
        # of their own besides their batch's (a straggler's second run).
        self._batches: dict[int, int] = {}
        self._batch_starts: list[int] = []
        self._spent: dict[int, set[int]] = {}
        self._doubles: set[int] = set()
        self.logs: list[str] = []  # the workers' result logs at the last listing
        self.view = ScanView(self)

    def take_changed(self) -> Iterator[int]:
        """The chunks whose entry was set (new, or replaced) since the last call, ascending:
        a collect looks at those alone, not at the thousands of loose chunks it saw before."""
        changed, self._changed = self._changed, bytearray(len(self._changed))
        past, self._changed_past = sorted(self._changed_past), set()
        return itertools.chain(_positions(changed), past)

    def _mark(self, chunk: int, changed: bool) -> None:
        if chunk >= BITMAP_CHUNKS:
            (self._changed_past.add if changed else self._changed_past.discard)(chunk)
            return
        if chunk >= len(self._changed):
            self._changed.extend(bytes(chunk + 1 - len(self._changed)))
        self._changed[chunk] = changed

    def update(self, names: Iterable[str]) -> ScanView:
        """The view (``{chunk: {"final": [kinds], "live": [file names]}}``) of the loose
        names of this listing of the work_dir; chunks whose files are of the same kinds, and
        none live, share one entry."""
        results = bytearray(len(self._results))
        others: set[str] = set()
        batches: dict[int, int] = {}
        logs: list[str] = []
        for name in names:
            if name.endswith(".result") and name.startswith("chunk-"):
                key = name[6:-7]
                if key.isdigit() and (chunk := int(key)) < BITMAP_CHUNKS:
                    if chunk >= len(results):
                        results.extend(bytes(chunk + 1 - len(results)))
                    results[chunk] = 1
                    continue
                batch = parse_batch_key(key)
                if batch is not None:
                    batches[batch[0]] = batch[1]
                    continue
            if name.startswith("chunk-"):
                others.add(name)
            elif name.startswith(RESULT_LOG_PREFIX):
                logs.append(name)
        self.logs = logs
        self._set_batches(batches, results, others)
        old = self._results
        if len(old) < len(results):
            old.extend(bytes(len(results) - len(old)))
        changes: dict[int, list[tuple[str, bool]]] = {}
        for name, present in itertools.chain(((n, False) for n in self._other_names - others),
                                             ((n, True) for n in others - self._other_names)):
            parsed = parse_loose_name(name)
            if parsed is not None:
                changes.setdefault(parsed[0], []).append((name, present))
        # Results that came or went (a byte 1 where the two listings differ): a chunk without
        # other files has its entry set or dropped here, without a parse or a sort.
        size = len(results)
        differ = (int.from_bytes(old, "little") ^ int.from_bytes(results, "little"))
        for chunk in _positions(differ.to_bytes(size, "little")):
            present = results[chunk] == 1
            if chunk in changes or chunk in self._others:
                changes.setdefault(chunk, []).append((loose_name(chunk, "result"), present))
            else:
                self._mark(chunk, present)
        for chunk, changed in changes.items():
            chunk_names = set(self._others.get(chunk) or
                              ((loose_name(chunk, "result"),) if chunk < len(old) and old[chunk]
                               else ()))
            for name, present in changed:
                if present:
                    chunk_names.add(name)
                else:
                    chunk_names.discard(name)
            self._others.pop(chunk, None)
            self._slots.pop(chunk, None)
            ordered = tuple(sorted(chunk_names))
            alone = ordered == (loose_name(chunk, "result"),) and chunk < BITMAP_CHUNKS
            if ordered and not alone:
                self._others[chunk] = ordered
                self._slots[chunk] = _slot(ordered)
            self._mark(chunk, bool(ordered))
        self._results, self._other_names = results, others
        return self.view

    def _set_batches(self, batches: dict[int, int], results: bytearray, others: set[str]) -> None:
        """Mark the chunks of the listed batches (but those spent) as having a result, as
        their own result names do."""
        self._spent = {first: spent for first, spent in self._spent.items() if first in batches}
        self._batches, self._batch_starts, self._doubles = batches, sorted(batches), set()
        for first, count in batches.items():
            spent = self._spent.get(first, ())
            last = first + count
            if last <= BITMAP_CHUNKS and last > len(results):
                results.extend(bytes(last - len(results)))
            for chunk in range(first, last):
                if chunk in spent:
                    continue
                if chunk >= BITMAP_CHUNKS:
                    others.add(loose_name(chunk, "result"))
                elif results[chunk]:
                    self._doubles.add(chunk)
                else:
                    results[chunk] = 1

    def _batch_of(self, chunk: int) -> int | None:
        """The first chunk of the listed batch that holds ``chunk``'s result, if one does."""
        at = bisect.bisect_right(self._batch_starts, chunk) - 1
        if at < 0:
            return None
        first = self._batch_starts[at]
        if chunk >= first + self._batches[first] or chunk in self._spent.get(first, ()):
            return None
        return first

    def result_name(self, chunk: int) -> str:
        """The name that holds the chunk's loose result: its batch's, else its own."""
        first = self._batch_of(chunk)
        return loose_name(chunk, "result") if first is None else \
            batch_result_name(first, self._batches[first])

    def drop_result(self, chunk: int) -> list[str]:
        """The chunk's loose result is archived or discarded: the names to remove now (its
        own, and its batch's once every chunk of the batch is archived or discarded)."""
        first = self._batch_of(chunk)
        if first is None:
            return [loose_name(chunk, "result")]
        spent = self._spent.setdefault(first, set())
        spent.add(chunk)
        names = [loose_name(chunk, "result")] if chunk in self._doubles else []
        self._doubles.discard(chunk)
        if len(spent) == self._batches[first]:
            names.append(batch_result_name(first, self._batches[first]))
        return names

    def live_captures(self) -> dict[int, list[str]]:
        return {chunk: slot["live"] for chunk, slot in self._slots.items() if slot["live"]}

    def has_result(self, chunk: int) -> bool:
        """Whether the last listing showed the chunk's result (kept in the arrays)."""
        return 0 <= chunk < len(self._results) and self._results[chunk] == 1


_ONLY_RESULT_NAME = "chunk-000000.result"


class ScanView(Mapping[int, dict[str, list[str]]]):
    """A LooseView as ``{chunk: {"final": [kinds], "live": [file names]}}``, ascending."""

    def __init__(self, loose: LooseView):
        self._loose = loose

    def __getitem__(self, chunk: int) -> dict[str, list[str]]:
        slot = self._loose._slots.get(chunk)
        if slot is not None:
            return slot
        if isinstance(chunk, int) and self._loose.has_result(chunk):
            return _slot((_ONLY_RESULT_NAME,))
        raise KeyError(chunk)

    def __contains__(self, chunk: object) -> bool:
        return chunk in self._loose._slots or (isinstance(chunk, int)
                                               and self._loose.has_result(chunk))

    def __iter__(self) -> Iterator[int]:
        slots = self._loose._slots
        return heapq.merge((c for c in _positions(self._loose._results) if c not in slots),
                           sorted(slots))

    def __len__(self) -> int:
        slots, results = self._loose._slots, self._loose._results
        return (results.count(1) + len(slots)
                - sum(1 for c in slots if 0 <= c < len(results) and results[c]))


def _positions(flags: bytes | bytearray) -> Iterator[int]:
    """Where ``flags`` holds a 1, ascending."""
    at = flags.find(1)
    while at >= 0:
        yield at
        at = flags.find(1, at + 1)


class LooseEntries(Mapping[str, str]):
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
