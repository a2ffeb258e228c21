"""A fork server child's stdout and stderr: pipes that the server reads, and files in the
work_dir only where a chunk writes something.

A chunk that captures its own output creates two files in the work_dir and, as most chunks
print nothing, removes them again: eight round trips a chunk to a networked filesystem's
server, more than the chunk's result costs. A child of LocalPool's fork server (array mode)
writes into pipes instead, whose read ends the server holds, and the server makes the same
files a chunk makes for itself (names.py), and only when bytes arrive: a live capture while
the chunk runs, the chunk's ``.stdout``/``.stderr`` once it has finished. The server outlives
its children, so what a chunk wrote before it was killed is in its live capture by the time
the server reports the child's end; output before the chunk starts goes to scheduler.log.

The child asks over a socket (``start N``, ``finish N``) and waits for the answer, so nothing
it wrote before asking is routed after: the bytes are in the pipe before the question is in
the socket, and the server empties the pipes before it answers. Its result goes the same way
(``result N SIZE`` and the payload), last, for the server to commit (forkmaps.py).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable

from poolparty_raster.names import live_capture_name, loose_name

CONTROL_FD = 3  # the child's end of the socket, where the child finds it
_STREAMS = ("stdout", "stderr")  # fds 1 and 2
_READ_SIZE = 65536
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW


class ChildOutput:
    """The server's side, for one child: its pipes' read ends, and where their bytes go."""

    def __init__(self, work_dir: str, log: str, commit: Callable[[int, bytes], None]) -> None:
        self.work_dir = work_dir
        self.log = log
        self.commit = commit  # (chunk, result): commits a chunk's result, raises OSError
        pipes = [os.pipe() for _ in _STREAMS]
        self.streams = {r: stream for (r, _), stream in zip(pipes, _STREAMS)}
        self._child_ends = [w for _, w in pipes]
        self.control, self._child_control = socket.socketpair()
        for fd in self.streams:
            os.set_blocking(fd, False)
        self.chunk: int | None = None  # once the child said ``start``
        self._files: dict[str, tuple[int, str]] = {}  # stream -> live capture (fd, path)
        self._log_fd: int | None = None
        self._error: OSError | None = None
        self._inbox = b""  # what came on the socket and is not a whole message yet

    def become_child(self) -> None:
        """In the child, just forked: fds 1 and 2 the pipes, the socket at CONTROL_FD, every
        other descriptor (the server's, other children's) closed."""
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, end in enumerate(self._child_ends, start=1):
            os.dup2(end, fd)
        os.dup2(self._child_control.fileno(), CONTROL_FD)
        os.closerange(CONTROL_FD + 1, 65536)
        for closed in (self.control, self._child_control):
            closed.detach()  # their numbers were closed above: a later close would hit another
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        global launcher
        launcher = PipedCaptures(socket.socket(fileno=CONTROL_FD))

    def forked(self) -> None:
        """In the server, once the child has its copies of the child's ends."""
        for end in self._child_ends:
            os.close(end)
        self._child_control.close()

    def fds(self) -> list[int]:
        """What the server waits on: the pipes still open, and the socket."""
        control = self.control.fileno()  # -1 once the child closed its end
        return [*self.streams, *([control] if control >= 0 else [])]

    def readable(self, fd: int) -> None:
        if fd == self.control.fileno():
            self._answer()
        else:
            self._drain(fd)

    def close(self) -> None:
        """The child has ended: what it (or a process it left) wrote is filed, and the pipes
        are closed; a live capture that holds output stays for the driver."""
        for fd in list(self.streams):
            self._drain(fd)
            if self.streams.pop(fd, None):  # still open: a process the child left holds it
                os.close(fd)
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()
        if self._log_fd is not None:
            os.close(self._log_fd)
        self.control.close()

    def _answer(self) -> None:
        message = self._receive()
        if message is None:
            return
        verb, chunk, payload = message
        for fd in list(self.streams):
            self._drain(fd)
        if verb == "start" and chunk is not None:
            self.chunk = chunk
        elif verb == "finish" and chunk is not None:
            self._publish(chunk)
        elif verb == "result" and chunk is not None:
            if self._error is None:
                try:  # last: the chunk's output files are in place before its result
                    self.commit(chunk, payload)
                except Exception as exc:  # noqa: BLE001 -- the chunk's failure, not the server's
                    self._error = exc if isinstance(exc, OSError) else OSError(repr(exc))
        else:  # something else wrote on the socket's descriptor (a task that reused fd 3)
            self._error = self._error or OSError(f"not a question: {verb[:40]!r}")
        answer = "ok" if self._error is None else f"error {self._error}"
        with contextlib.suppress(OSError):  # the child died waiting: reaped next
            self.control.sendall(answer.encode() + b"\n")

    def _receive(self) -> tuple[str, int | None, bytes] | None:
        """The child's message, (verb, chunk, payload), once it has come whole; None until
        then, and once the child closed its end (it ended, or a task closed fd 3)."""
        try:
            data = self.control.recv(_READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self.control.close()
            return None
        self._inbox += data
        line, newline, rest = self._inbox.partition(b"\n")
        words = line.decode(errors="replace").split(" ")
        size = int(words[2]) if words[0] == "result" and words[2:3] and words[2].isdigit() else 0
        if (not newline and len(self._inbox) < _READ_SIZE) or len(rest) < size:
            return None  # the rest is on its way
        self._inbox = rest[size:]  # empty: the child waits for the answer before it says more
        chunk = int(words[1]) if words[1:2] and words[1].isdigit() else None
        return words[0], chunk, rest[:size]

    def _publish(self, chunk: int) -> None:
        """The chunk's live captures become its output files (they exist only where it wrote)."""
        for stream, (fd, path) in list(self._files.items()):
            os.close(fd)
            del self._files[stream]
            try:
                os.replace(path, os.path.join(self.work_dir, loose_name(chunk, stream)))
            except OSError as exc:
                self._error = self._error or exc

    def _drain(self, fd: int) -> None:
        """Everything the pipe holds now, written where it belongs; the pipe closed at its end."""
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                del self.streams[fd]
                os.close(fd)
                return
            self._write(self.streams[fd], data)

    def _write(self, stream: str, data: bytes) -> None:
        try:
            target = self._target(stream)
            while data:
                data = data[os.write(target, data):]
        except OSError as exc:  # a full disk: said to the child when it next asks
            self._error = self._error or exc

    def _target(self, stream: str) -> int:
        if self.chunk is None:
            if self._log_fd is None:
                self._log_fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            return self._log_fd
        if stream not in self._files:
            path = os.path.join(self.work_dir, live_capture_name(self.chunk, stream))
            self._files[stream] = (os.open(path, _FILE_FLAGS, 0o600), path)
        return self._files[stream][0]


class PipedCaptures:
    """The child's side: what node.Captures does for a chunk, asked of the server."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control

    def start(self, chunk: int) -> None:
        self._ask(f"start {chunk}")

    def finish(self, chunk: int) -> None:
        self._ask(f"finish {chunk}")

    def publish(self, destination: str, chunk: int, payload: bytes) -> bool:
        """Have the server commit the chunk's result (under ``destination``, the chunk's
        result name in the work_dir it runs in), as a worker's ResultLog would."""
        self._ask(f"result {chunk} {len(payload)}", payload)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()

    def _ask(self, question: str, payload: bytes = b"") -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.control.sendall(question.encode() + b"\n" + payload)
        answer = self.control.recv(4096).decode().strip()
        if answer != "ok":
            raise OSError(f"LocalPool's fork server could not write the chunk's output into "
                          f"the work_dir: {answer.removeprefix('error ') or 'no answer'}")


launcher: PipedCaptures | None = None  # set in a fork server's child (become_child)
