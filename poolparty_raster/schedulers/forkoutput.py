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
the socket, and the server empties the pipes before it answers.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys

from poolparty_raster.names import live_capture_name, loose_name

CONTROL_FD = 3  # the child's end of the socket, where the child finds it
_STREAMS = ("stdout", "stderr")  # fds 1 and 2
_READ_SIZE = 65536
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW


class ChildOutput:
    """The server's side, for one child: its pipes' read ends, and where their bytes go."""

    def __init__(self, work_dir: str, log: str) -> None:
        self.work_dir = work_dir
        self.log = log
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
        try:
            question = self.control.recv(64).decode()
        except OSError:
            question = ""
        if not question:  # the child closed its end (it ended, or a task closed fd 3)
            self.control.close()
            return
        verb, _, chunk = question.strip().partition(" ")
        for fd in list(self.streams):
            self._drain(fd)
        if verb == "start" and chunk.isdigit():
            self.chunk = int(chunk)
        elif verb == "finish" and chunk.isdigit():
            self._publish(int(chunk))
        else:  # something else wrote on the socket's descriptor (a task that reused fd 3)
            self._error = self._error or OSError(f"not a question: {question[:40]!r}")
        answer = "ok" if self._error is None else f"error {self._error}"
        with contextlib.suppress(OSError):  # the child died waiting: reaped next
            self.control.sendall(answer.encode() + b"\n")

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

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()

    def _ask(self, question: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.control.sendall(question.encode() + b"\n")
        answer = self.control.recv(4096).decode().strip()
        if answer != "ok":
            raise OSError(f"LocalPool's fork server could not write the chunk's output into "
                          f"the work_dir: {answer.removeprefix('error ') or 'no answer'}")


launcher: PipedCaptures | None = None  # set in a fork server's child (become_child)
