"""Runs one job element detached from everything.

A runner is forked from the command (or runner) that started it, or started as
``python -m dummy_queues._runner STATE_PATH ELEMENT_KEY INFO_JSON``.  It is a
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
import time
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
        word = result.pop("state")
        if word == "ERROR":
            elem.update(state="ERROR", pid=None, error_time=now, **result)
        else:
            _state.finish(elem, word, now, **result)
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
        _record(path, key, state="TIMEOUT", exit_code=0, signal=15, reason="TimeLimit")
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


if __name__ == "__main__":
    main()
