"""LocalPool's fork server: one interpreter, started once per pool, that forks a child per chunk
and runs the emitted ``script.py`` in it.

Starting Python and importing numpy and rasterio costs about 0.4 s a chunk; forking a process
that has imported them costs a few milliseconds. Each chunk still runs in a process of its own
(a task that crashes or leaks takes nothing else with it), through the same worker script as on
a cluster. The server is single-threaded, so forking it is safe, unlike forking the driver,
whose threads may hold locks.

Protocol on the server's stdin and stdout, one JSON object per line:
  driver -> server  {"id": 7, "argv": [script, chunk], "cwd": "...", "log": ".../scheduler.log"}
                    {"kill": 7}                kill chunk 7's process and its session
  server -> driver  {"id": 7, "pid": 1234}   the child runs, in a session of its own
                    {"id": 7, "exit": 0}      it ended (negative: killed by that signal)
The server kills what it runs by pid (a child that has not made its session yet leads no
group) and by session, and only a child it has not reaped: its pid is not reused meanwhile.

Nothing outlives the driver: when it goes away (end of input, or killed: on Linux the server
gets SIGTERM as its parent-death signal) the server kills its children's sessions and exits,
and each child gets SIGKILL should the server itself die. A chunk left running would go on
claiming chunks (workers mode) that a resumed driver then counts as lost and runs again, and
write into a work_dir after its map ended.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# Imported by the server for every chunk: the worker's own modules, and the pools, which a
# function's module that uses this package imports when it is unpickled (filelock alone takes
# tens of milliseconds).
ALWAYS_PRELOADED = ("cloudpickle", "poolparty_raster.node", "poolparty_raster.workerloop",
                    "poolparty_raster.workdir", "poolparty_raster.pools")
# Imported by the server when the driver has them, so that chunks start with them loaded.
PRELOADABLE = ("numpy", "rasterio", "scipy", "pandas", "poolparty_raster.applier")
# Read by those libraries as they are imported (thread counts, GDAL's configuration): a server
# that imported them under other values cannot honour a change.
IMPORT_TIME_VARIABLES = ("OMP_", "OPENBLAS_", "MKL_", "VECLIB_", "NUMEXPR_", "GDAL_", "CPL_",
                         "PROJ_")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SERVERS: dict[tuple[Any, ...], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()
_T = TypeVar("_T")


def shared(python: str) -> ForkServer:
    """The process's fork server for this interpreter, what the driver has imported and the
    environment those imports read, shared by every LocalPool: a pool made for each map (the
    applier's CW_SUBPROC) starts it once."""
    preload = tuple(name for name in PRELOADABLE if name in sys.modules)
    settings = tuple(sorted((name, value) for name, value in os.environ.items()
                            if name.startswith(IMPORT_TIME_VARIABLES)))
    key = (python, preload, settings)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None or not server.alive:
            server = _SERVERS[key] = ForkServer(python, preload)
        return server


@atexit.register
def _close_servers() -> None:
    for server in list(_SERVERS.values()):
        server.close()


# -- dying with the parent ------------------------------------------------------------------
_prctl: Any = None


def _load_prctl() -> Any:
    """libc's prctl, or None off Linux. Loaded before a fork: the child only calls it."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # a libc without prctl: nothing to set
            _prctl = False
    return _prctl or None


def can_die_with_parent() -> bool:
    """Whether die_with_parent() does anything here (Linux); loads what it calls."""
    return _load_prctl() is not None


def die_with_parent(signum: int, parent: int) -> bool:
    """Have the kernel send this process ``signum`` when its parent dies (Linux; elsewhere a
    no-op). False when the parent is already gone (this process was orphaned before the call:
    the signal will never come), and the caller should exit. The parent is the *thread* that
    forked this process: it must live as long as its process (see ``in_lasting_thread``)."""
    prctl = _load_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    return os.getppid() == parent


class _LastingThread:
    """One daemon thread per process that runs calls handed to it and never ends: Linux sends
    a child's parent-death signal when the thread that forked it ends, and the threads that
    start chunks come and go."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # a forked driver has neither the thread nor a lock
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (call, box, done)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], _T]) -> _T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="poolparty-spawner")
                self._thread.start()
        box: dict[str, Any] = {}
        done = threading.Event()
        self._calls.put((call, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _serve(self) -> None:
        while True:
            call, box, done = self._calls.get()
            try:
                box["value"] = call()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                box["error"] = exc
            finally:
                del call
                done.set()


in_lasting_thread = _LastingThread().run


class ForkServer:
    """The driver's side: start chunks through the server, one ``Launch`` each."""

    def __init__(self, python: str, preload: Sequence[str]):
        driver = os.getpid()
        self._process = in_lasting_thread(lambda: subprocess.Popen(
            [python, "-m", "poolparty_raster.schedulers.forkserver", str(driver), *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True))
        self._lock = threading.Lock()
        self._launches: dict[int, Launch] = {}
        self._next_id = 0
        self.alive = True
        self._reader = threading.Thread(target=self._read, daemon=True, name="poolparty-forkserver")
        self._reader.start()

    def launch(self, argv: Sequence[str], cwd: str, log: str) -> Launch:
        """Start a chunk; raises OSError when the server is gone (the caller falls back)."""
        with self._lock:
            if not self.alive:
                raise OSError("the fork server has exited")
            self._next_id += 1
            launch = self._launches[self._next_id] = Launch(self, self._next_id)
            self._send({"id": self._next_id, "argv": list(argv), "cwd": cwd, "log": log})
        if not launch.started.wait(30):
            with self._lock:
                launch.abandoned = launch.pid is None
            if launch.abandoned:  # the caller starts the chunk itself: this one must not run
                self.kill(launch)
                raise OSError("the fork server did not start the chunk within 30 s")
        if launch.pid is None:
            raise OSError("the fork server exited before it started the chunk")
        return launch

    def kill(self, launch: Launch) -> None:
        """Have the server kill the chunk's process and session, unless it has ended (or has
        not started yet: requests are read in order, so it is killed as soon as it starts).
        A server that is gone took its children with it."""
        with self._lock:
            if self.alive and not launch.ended.is_set():
                with contextlib.suppress(OSError):
                    self._send({"kill": launch.id})

    def _send(self, message: dict[str, Any]) -> None:
        """Write a request (the caller holds the lock)."""
        try:
            self._process.stdin.write((json.dumps(message) + "\n").encode())
            self._process.stdin.flush()
        except OSError:
            self.alive = False
            raise

    def _read(self) -> None:
        with self._process.stdout:  # closed when the server's end closes: it has exited
            self._relay()
        self._process.wait()  # reaped, not left a zombie until the garbage collector
        with self._lock:  # the server died: nobody will report on what it started
            self.alive = False
            orphans, self._launches = list(self._launches.values()), {}
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        for launch in orphans:
            launch.code = -signal.SIGKILL
            launch.started.set()
            launch.ended.set()

    def _relay(self) -> None:
        for line in self._process.stdout:
            message = json.loads(line)
            with self._lock:
                launch = self._launches.get(message["id"])
            if launch is None:
                continue
            if "pid" in message:
                with self._lock:
                    launch.pid = message["pid"]
                launch.started.set()
            else:
                launch.code = message["exit"]
                launch.ended.set()
                with self._lock:
                    del self._launches[message["id"]]

    def close(self) -> None:
        """End the server, and with it every chunk it still runs."""
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        self._reader.join(5)  # it reads the server's last words and closes the pipe


class Launch:
    """One chunk started by the server: like a Popen, ``pid``, ``wait()`` and ``kill()``."""

    def __init__(self, server: ForkServer, launch_id: int) -> None:
        self.server = server
        self.id = launch_id
        self.pid: int | None = None
        self.code: int | None = None
        self.abandoned = False  # started too late: the caller ran the chunk another way
        self.started = threading.Event()
        self.ended = threading.Event()

    def wait(self) -> int:
        self.ended.wait()
        return self.code if self.code is not None else -signal.SIGKILL

    def kill(self) -> None:
        """Kill the chunk's process and what it started (see ForkServer.kill)."""
        self.server.kill(self)


def kill_session(pid: int) -> None:
    """Kill a chunk's process and what it started: its session, once it has made it (pgid ==
    pid), and the process itself, which leads no group before its setsid()."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


# -- the server ---------------------------------------------------------------------------
def serve(driver: int, preload: Sequence[str]) -> None:
    children: dict[int, int] = {}  # pid -> request id, until reaped

    def stop(signum: int | None = None, frame: Any = None) -> None:
        """The driver is gone: so is everything it started."""
        for pid in list(children):
            kill_session(pid)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if not die_with_parent(signal.SIGTERM, driver):
        return  # the driver died before the call: nothing would tell us
    for name in (*ALWAYS_PRELOADED, *preload):
        try:  # what every chunk needs, and what the driver uses, loaded once
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- a chunk imports it itself then
            pass

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    server = os.getpid()
    pending = b""
    while True:
        ready, _, _ = select.select([0, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
        _reap(children)
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                stop()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                if "kill" in request:
                    # Unreaped (still in children): its pid, and its group, are not reused.
                    for pid in [p for p, i in children.items() if i == request["kill"]]:
                        kill_session(pid)
                    continue
                # SIGTERM waits till the child is in children (and the child has dropped the
                # server's handler, which would kill the children's copy of children).
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                pid = os.fork()
                if pid == 0:
                    _child(request, server)
                children[pid] = request["id"]
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                _send({"id": request["id"], "pid": pid})


def _reap(children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            _send({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _child(request: dict[str, Any], server: int) -> None:
    """Become the chunk's process: the server's pipes closed, output to scheduler.log, the
    emitted script run as ``python script.py chunk`` would, then exit without the server's
    clean-up. It dies with the server."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler kills its children
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by the server
        os.setsid()
        if not die_with_parent(signal.SIGKILL, server):
            os._exit(1)  # the server died as this process started: the driver is gone
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 65536)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        import runpy
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 -- reported in scheduler.log, as Python would
        import traceback
        traceback.print_exc()
    finally:
        try:
            import atexit
            atexit._run_exitfuncs()  # what the task registered, as a normal exit would run
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2:])
