"""The files of workers mode's ``claims/`` as both sides read them (claims.py is the driver's
side, claimmaker.py the worker's).

A claim ``claims/NNNNNN`` takes a *run*: chunks NNNNNN to NNNNNN + K - 1. It holds
``"<worker> <host> <pid> <token>"``, and ``"\\nrun K"`` after it where K > 1. Runs form a chain
from chunk 0: a claim is only ever made at chunk 0 or where a run ends, and is never
removed while the map runs (a dead worker's chunks are freed by a ``.free`` name of their
own, claimed again as ``.again``). Exactly one process makes a name, so two claims never
start at one chunk, and no claim can start inside a run: runs never overlap.
"""
from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

REISSUE = ".reissue"  # the driver lets a second worker run this straggling chunk
DUPLICATE = ".dup"    # that second worker's claim
REDO = ".redo"        # the chunk's stored output is unreadable: run it although it is done
FREE = ".free"        # the driver freed this chunk of a dead worker's run
AGAIN = ".again"      # a worker's claim of a freed chunk
BADGE_PREFIX = "worker."
_RUN_MARK = "\nrun "
# What os.link raises where the filesystem has no hard links: claims are O_EXCL files there.
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


def out_of_links(exc: OSError, linked_before: int) -> bool:
    """Whether a failed link means that its source takes no more links (the caller starts
    another): EMLINK, or ENOSPC once the source has links. GlusterFS keeps an extended
    attribute per link on its brick's inode, and an ext4 brick holds about 40 of them in a
    block: the next link fails with ENOSPC while the disk has room. A source's first link
    failing with ENOSPC is a full disk."""
    return exc.errno == errno.EMLINK or (exc.errno == errno.ENOSPC and linked_before > 0)


def process_token() -> str:
    """``<host>-<pid>-<ns>``: names this process's own files on a filesystem that many hosts
    share, unique also after a pid is reused."""
    return f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"


def claim_text(worker: str, run: int) -> str:
    """What a claim of ``run`` chunks holds."""
    return worker if run == 1 else f"{worker}{_RUN_MARK}{run}"


def parse_claim(text: str) -> tuple[str, int]:
    """(holder, run length) of a claim's text; an empty text (an ``O_EXCL`` claim whose worker
    is still writing it: those take one chunk) is ("", 1)."""
    holder, mark, run = text.partition(_RUN_MARK)
    return holder, int(run) if mark and run.isdigit() else 1


def suffixed(name: str, suffix: str) -> int | None:
    """``"000012.free"``, ``".free"`` -> 12; None where the name is not the chunk's of that
    suffix."""
    stem = name[:-len(suffix)] if name.endswith(suffix) else ""
    return int(stem) if stem.isdigit() else None


class ClaimFiles:
    """claims/ as a path, and the claims read so far (by badge inode, or by chunk and inode
    for an ``O_EXCL`` claim): a badge's links share its inode, and a badge stays till the
    map ends, so its text is read once."""

    def __init__(self, path: str):
        self.path = path
        self._texts: dict[Any, tuple[str, int]] = {}  # inode or (chunk, inode) -> holder, run
        self.files_seen = False  # whether a claim read was a file of its own (no hard links)

    def path_of(self, chunk: int) -> str:
        return f"{self.path}{os.sep}{chunk:06d}"  # not os.path.join: asked for every claim

    def _read(self, path: str, chunk: int, entry: os.DirEntry[str] | None = None
              ) -> tuple[str, float, int] | None:
        """(holder, heartbeat mtime, run length) of the claim at ``path``; None when there is
        none. A claim just made without hard links may show an empty holder."""
        try:
            info = entry.stat() if entry is not None else os.stat(path)
        except FileNotFoundError:
            return None
        parsed = self._parsed(path, chunk, info.st_ino, info.st_nlink)
        return None if parsed is None else (parsed[0], info.st_mtime, parsed[1])

    def _parsed(self, path: str, chunk: int, inode: int, links: int) -> tuple[str, int] | None:
        key = inode if links > 1 else (chunk, inode)
        self.files_seen = self.files_seen or links == 1
        parsed = self._texts.get(key)
        if parsed is None:
            try:
                with open(path) as f:
                    parsed = parse_claim(f.read())
            except FileNotFoundError:
                return None
            if parsed[0]:  # empty: its worker is still writing its name
                self._texts[key] = parsed
        return parsed

    def _known(self, chunk: int, inode: int) -> tuple[str, int] | None:
        """The holder and run of a claim read before, by its listing's inode (no stat)."""
        return self._texts.get(inode) or self._texts.get((chunk, inode))

    def _forget(self, chunk: int) -> None:
        """Forget the O_EXCL claims read of this chunk: a new claim file may get a freed
        inode back."""
        for key in [k for k in self._texts if isinstance(k, tuple) and k[0] == chunk]:
            del self._texts[key]

    def make_free(self, chunk: int) -> bool:
        """Give ``chunk`` the ``.free`` name that lets any worker claim it again (as
        ``.again``); False where it has one already. Made by the driver for a dead worker's
        chunks, and by a worker for the unstarted rest of its run behind a slow chunk."""
        try:
            os.close(os.open(self.path_of(chunk) + FREE, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600))
        except FileExistsError:
            return False
        return True

    def _read_holder(self, path: str) -> str | None:
        try:
            with open(path) as f:
                return parse_claim(f.read())[0]
        except FileNotFoundError:
            return None

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
