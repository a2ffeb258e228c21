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
                    {"id": 8, "forget": "..."} let go of that work_dir's map (forkmaps.py)
  server -> driver  {"id": 7, "pid": 1234}   the child runs, in a session of its own
                    {"id": 7, "exit": 0}      it ended (negative: killed by that signal)
                    {"id": 8, "forgot": true} it holds nothing of the work_dir any more
The server kills what it runs by pid (a child that has not made its session yet leads no
group) and by session, and only a child it has not reaped: its pid is not reused meanwhile.
A child's stdout and stderr are pipes that the server reads and files in the work_dir
(forkoutput.py), before it reports the child's end; it compiles each script once, and reads
each map's manifest and tasks once for its children and commits their results (forkmaps.py).

Nothing outlives the driver: when it goes away (end of input, or killed: on Linux the server
gets SIGTERM as its parent-death signal) the server kills its children's sessions and exits,
and each child gets SIGKILL should the server itself die. A chunk left running would go on
claiming chunks (workers mode) that a resumed driver then counts as lost and runs again, and
write into a work_dir after its map ended.
"""
from __future__ import annotations

import atexit
import builtins
import contextlib
import functools
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

from poolparty_raster.schedulers import forkmaps
from poolparty_raster.schedulers.forkoutput import ChildOutput
from poolparty_raster.schedulers.parentdeath import die_with_parent, in_lasting_thread

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
FORGET_WAIT = 30.0  # seconds the driver waits for the server to let go of a work_dir
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
        driver = os.getpid()
        self._process = in_lasting_thread(lambda: subprocess.Popen(
            [python, "-m", "poolparty_raster.schedulers.forkserver", str(driver), *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True))
        self._lock = threading.Lock()
        self._launches: dict[int, Launch] = {}
        self._forgetting: dict[int, threading.Event] = {}
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

    def forget(self, work_dir: str) -> None:
        """Have the server let go of the work_dir's map (forkmaps.py), and return once it has
        (up to FORGET_WAIT): the driver is about to remove the work_dir, which a file held
        open keeps from being removed on NFS. A server that is gone holds nothing."""
        with self._lock:
            if not self.alive:
                return
            self._next_id += 1
            done = self._forgetting[self._next_id] = threading.Event()
            try:
                self._send({"id": self._next_id, "forget": work_dir})
            except OSError:
                return
        done.wait(FORGET_WAIT)

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
            forgetting, self._forgetting = list(self._forgetting.values()), {}
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        for done in forgetting:
            done.set()
        for launch in orphans:
            launch.code = -signal.SIGKILL
            launch.started.set()
            launch.ended.set()

    def _relay(self) -> None:
        for line in self._process.stdout:
            message = json.loads(line)
            with self._lock:
                launch = self._launches.get(message["id"])
                forgotten = self._forgetting.pop(message["id"], None)
            if forgotten is not None:
                forgotten.set()
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
    outputs: dict[int, ChildOutput] = {}  # pid -> its stdout and stderr, until reaped

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
    scripts = forkmaps.Scripts()
    maps = forkmaps.HeldMaps()
    pending = b""
    while True:
        readers = {fd: output for output in outputs.values() for fd in output.fds()}
        ready = set(_wait_readable([0, wake_read, *readers]))
        for fd in ready & readers.keys():
            readers[fd].readable(fd)
        if wake_read in ready:
            os.read(wake_read, 4096)
        _reap(children, outputs)
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
                if "forget" in request:
                    maps.forget(request["forget"])
                    _send({"id": request["id"], "forgot": True})
                    continue
                # SIGTERM waits till the child is in children (and the child has dropped the
                # server's handler, which would kill the children's copy of children).
                work_dir = request["cwd"]
                code = scripts.compiled(os.path.join(work_dir, request["argv"][0]))
                held = maps.refresh(work_dir)
                output = ChildOutput(work_dir, request["log"],
                                     functools.partial(maps.commit, work_dir))
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                pid = os.fork()
                if pid == 0:
                    forkmaps.current = held
                    _child(request, server, code, output)
                output.forked()
                children[pid] = request["id"]
                outputs[pid] = output
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                _send({"id": request["id"], "pid": pid})


def _wait_readable(fds: list[int]) -> list[int]:
    """The descriptors of ``fds`` that can be read, once one can (epoll: a server running
    many chunks waits on more than select's 1,024)."""
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        return [key.fd for key, _ in selector.select()]


def _reap(children: dict[int, int], outputs: dict[int, ChildOutput]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            # Its output is in the work_dir before the driver hears the chunk ended.
            outputs.pop(pid).close()
            _send({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _run_main(path: str, code: types.CodeType) -> None:
    """Run ``code`` as the ``__main__`` module of ``path``, as ``python path`` would."""
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _child(request: dict[str, Any], server: int, code: types.CodeType | None,
           output: ChildOutput) -> None:
    """Become the chunk's process: the server's descriptors closed, output into pipes that the
    server files (forkoutput.py), the emitted script (``code``, compiled by the server) run as
    ``python script.py chunk`` would, then exit without the server's clean-up. It dies with
    the server."""
    exit_code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler kills its children
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by the server
        os.setsid()
        if not die_with_parent(signal.SIGKILL, server):
            os._exit(1)  # the server died as this process started: the driver is gone
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        output.become_child()
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        try:
            if code is None:
                import runpy
                runpy.run_path(sys.argv[0], run_name="__main__")
            else:
                _run_main(sys.argv[0], code)
            exit_code = 0
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
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
            os._exit(exit_code)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2:])
