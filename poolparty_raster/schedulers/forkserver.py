"""LocalPool's fork server: one interpreter, started once per pool, that forks a child per chunk
and runs the emitted ``script.py`` in it.

Starting Python and importing numpy and rasterio costs about 0.4 s a chunk; forking a process
that has imported them costs a few milliseconds. Each chunk still runs in a process of its own
(a task that crashes or leaks takes nothing else with it), through the same worker script as on
a cluster. The server is single-threaded, so forking it is safe, unlike forking the driver,
whose threads may hold locks.

Protocol on the server's stdin and stdout, one JSON object per line:
  driver -> server  {"id": 7, "argv": [script, chunk], "cwd": "...", "log": ".../scheduler.log"}
  server -> driver  {"id": 7, "pid": 1234}   the child runs, in a session of its own
                    {"id": 7, "exit": 0}      it ended (negative: killed by that signal)
When the driver goes away (end of input), the server exits and running children carry on, as
the subprocesses of a killed driver would.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

# Imported by the server for every chunk: the worker's own modules, and the pools, which a
# function's module that uses this package imports when it is unpickled (filelock alone takes
# tens of milliseconds).
ALWAYS_PRELOADED = ("cloudpickle", "poolparty_raster.worker", "poolparty_raster.workdir",
                    "poolparty_raster.pools")
# Imported by the server when the driver has them, so that chunks start with them loaded.
PRELOADABLE = ("numpy", "rasterio", "scipy", "pandas", "poolparty_raster.applier")
# Read by those libraries as they are imported (thread counts, GDAL's configuration): a server
# that imported them under other values cannot honour a change.
IMPORT_TIME_VARIABLES = ("OMP_", "OPENBLAS_", "MKL_", "VECLIB_", "NUMEXPR_", "GDAL_", "CPL_",
                         "PROJ_")
_SERVERS: dict[tuple[Any, ...], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()


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


class ForkServer:
    """The driver's side: start chunks through the server, one ``Launch`` each."""

    def __init__(self, python: str, preload: Sequence[str]):
        self._process = subprocess.Popen(
            [python, "-m", "poolparty_raster.schedulers.forkserver", *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)
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
            launch = self._launches[self._next_id] = Launch()
            request = {"id": self._next_id, "argv": list(argv), "cwd": cwd, "log": log}
            try:
                self._process.stdin.write((json.dumps(request) + "\n").encode())
                self._process.stdin.flush()
            except OSError:
                self.alive = False
                raise
        if not launch.started.wait(30):
            with self._lock:
                launch.abandoned = launch.pid is None
            if launch.abandoned:  # the caller starts the chunk itself: this one must not run
                raise OSError("the fork server did not start the chunk within 30 s")
        if launch.pid is None:
            raise OSError("the fork server exited before it started the chunk")
        return launch

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
                    abandoned = launch.abandoned
                if abandoned:
                    _kill(launch.pid)
                launch.started.set()
            else:
                launch.code = message["exit"]
                launch.ended.set()
                with self._lock:
                    del self._launches[message["id"]]

    def close(self) -> None:
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        self._reader.join(5)  # it reads the server's last words and closes the pipe


class Launch:
    """One chunk started by the server: like a Popen, ``pid`` and ``wait()``."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.code: int | None = None
        self.abandoned = False  # started too late: the caller ran the chunk another way
        self.started = threading.Event()
        self.ended = threading.Event()

    def wait(self) -> int:
        self.ended.wait()
        return self.code if self.code is not None else -signal.SIGKILL


def _kill(pid: int) -> None:
    """Kill a chunk's process and what it started (its session, once it has made it)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            continue


# -- the server ---------------------------------------------------------------------------
def serve(preload: Sequence[str]) -> None:
    for name in (*ALWAYS_PRELOADED, *preload):
        try:  # what every chunk needs, and what the driver uses, loaded once
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- a chunk imports it itself then
            pass

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: dict[int, int] = {}  # pid -> request id
    pending = b""
    while True:
        ready, _, _ = select.select([0, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
        _reap(children)
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children[pid] = request["id"]
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


def _child(request: dict[str, Any]) -> None:
    """Become the chunk's process: the server's pipes closed, output to scheduler.log, the
    emitted script run as ``python script.py chunk`` would, then exit without the server's
    clean-up."""
    code = 1
    try:
        os.setsid()
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
    serve(sys.argv[1:])
