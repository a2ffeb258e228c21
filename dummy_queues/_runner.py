"""Runs one job element detached from everything.

A runner is forked from the command (or runner) that started it (:func:`spawn`), or started
as ``python -m dummy_queues._runner STATE_PATH ELEMENT_KEY INFO_JSON``.  It is a
session leader, and the job's command stays in its process group, so
cancelling = killpg(runner).  It records the end of the job under the lock and
starts the next pending elements itself; that is what makes jobs progress with
no command calls.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any


class _Timeout(Exception):
    pass


def _record(path: str, key: str, **result: Any) -> None:
    from . import _state  # imported late: keeps job start latency down

    store = _state.Store(path)
    with store.edit() as state:
        elem = state["elements"].get(key)
        # Cancelled/purged meanwhile: the canceller already recorded the end.
        if elem is None or elem["state"] != "RUNNING" or elem["pid"] != os.getpid():
            return
        now = time.time()
        _state.end_element(elem, now, **result)
        _state.schedule(state, path, now)


def _open_outputs(info: dict[str, Any]) -> tuple[Any, Any]:
    mode = "ab" if info.get("append", True) else "wb"
    out = open(info["stdout"], mode)
    err = info.get("stderr")
    if not err or err == info["stdout"]:
        return out, out
    return out, open(err, mode)


def main() -> None:
    run(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))


def run(path: str, key: str, info: dict[str, Any]) -> None:
    with open(info["spool"], encoding="utf-8") as fh:
        spec = json.load(fh)
    env = dict(spec["env"])
    env.update(info.get("env", {}))
    cwd = info["cwd"]
    if not os.path.isdir(cwd):
        if info.get("on_error") == "error_state":  # SGE: Eqw with the reason
            _record(path, key, state="ERROR",
                    reason=f"error: can't chdir to {cwd}: No such file or directory")
            return
        cwd = "/tmp"  # SLURM: "couldn't chdir ... going to /tmp instead"
    try:
        out, err = _open_outputs(info)
    except OSError as exc:
        if info.get("on_error") == "error_state":
            _record(path, key, state="ERROR", reason=f'error: can\'t open output file '
                    f'"{exc.filename}": {exc.strerror}')
        else:  # SLURM: F FAILED JobLaunchFailure, nothing written
            _record(path, key, state="FAILED", exit_code=0, signal=53,
                    reason="JobLaunchFailure")
        return
    kill_wait = float(info.get("kill_wait", 1.0))
    time.sleep(float(info.get("delay", 0.0)))  # a slow node: running, but late to start
    try:
        child = subprocess.Popen(spec["argv"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err, close_fds=True)
    except OSError as exc:
        out.write(f"{spec['argv'][0]}: {exc.strerror}\n".encode())
        out.flush()
        _record(path, key, state="FAILED", exit_code=127, signal=0,
                reason="NonZeroExitCode")
        return
    child.returncode = 0  # we reap it with os.waitpid ourselves

    def on_term(signum: int, frame: Any) -> None:
        # Cancelled: the whole group got SIGTERM; give the job kill_wait to
        # exit, then SIGKILL the group (ourselves included; nothing to record).
        end = time.monotonic() + kill_wait
        while time.monotonic() < end:
            try:
                if os.waitpid(child.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout()

    signal.signal(signal.SIGTERM, on_term)
    limit = info.get("time_limit")
    if limit is not None:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(float(limit), 0.001))
    try:
        _, status = os.waitpid(child.pid, 0)
    except _Timeout:
        msg = info.get("timeout_message")
        if msg:
            out.write((msg + "\n").encode())
            out.flush()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # how the scheduler ends a job at its limit (HTCondor holds it), else TIMEOUT
        end = info.get("timeout_end") or {"state": "TIMEOUT", "exit_code": 0, "signal": 15,
                                          "reason": "TimeLimit"}
        _record(path, key, **end, time_limit=float(limit))
        os.killpg(os.getpgrp(), signal.SIGTERM)
        end = time.monotonic() + kill_wait
        while time.monotonic() < end:
            if os.waitpid(child.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.01)
        os.killpg(os.getpgrp(), signal.SIGKILL)
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    code = os.waitstatus_to_exitcode(status)
    for fh in {id(out): out, id(err): err}.values():
        fh.close()
    if code in info.get("error_exit_codes", ()):  # SGE: exit 100 puts the task into Eqw
        _record(path, key, state="ERROR", reason=f"exit_status of job start = {code}")
    elif code == 0:
        _record(path, key, state="COMPLETED", exit_code=0, signal=0, reason=None)
    elif code > 0:
        _record(path, key, state="FAILED", exit_code=code, signal=0,
                reason="NonZeroExitCode")
    else:
        _record(path, key, state="FAILED", exit_code=0, signal=-code,
                reason="JobLaunchFailure")


def spawn(path: str, key: str, info: dict[str, Any]) -> int:
    """Start a detached runner (own session, so its group can be killed); returns its pid.

    Commands and runners are single-threaded, so the runner is forked from them (no new
    interpreter to start: that halves the cost of a job) and double-forked, so that init, not
    a long-lived caller, reaps it. A threaded caller starts a fresh interpreter instead.
    """
    if threading.active_count() > 1:
        return _popen_runner(path, key, info)
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read)
            runner = os.fork()
            if runner == 0:
                os.close(write)
                _become_runner(path, key, info)
            os.write(write, str(runner).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        pid = int(pipe.read())
    os.waitpid(middle, 0)
    return pid


def _become_runner(path: str, key: str, info: dict[str, Any]) -> None:
    """The forked runner: detach, keep nothing of the parent's open files (its state lock
    above all), run the job, and exit without the parent's clean-up."""
    code = 1
    try:
        os.setsid()
        log = os.open(os.path.join(os.path.dirname(path), "runner.log"),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 65536)
        run(path, key, info)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _popen_runner(path: str, key: str, info: dict[str, Any]) -> int:
    from ._state import PKG_PARENT

    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    log = open(os.path.join(os.path.dirname(path), "runner.log"), "ab")
    try:
        # Detached: stdio must not be the caller's pipes, or a caller doing
        # subprocess.run(capture_output=True) would wait for the whole job.
        proc = subprocess.Popen(
            [sys.executable, "-m", "dummy_queues._runner", path, key, json.dumps(info)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
            start_new_session=True, env=env)
    finally:
        log.close()
    # We never wait for it (init reaps it once we exit); mark it done so
    # Popen.__del__ does not warn about a still-running child.
    proc.returncode = 0
    return proc.pid


if __name__ == "__main__":
    main()
