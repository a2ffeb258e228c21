"""What every fake command shares: option parsing, call records, command faults."""
from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Any, Callable

from . import _state

GARBLED = "\u00bf#garbled~\x7f|0x3f?? <<<trunc"  # valid UTF-8, parses as nothing


class UsageError(Exception):
    """Raised by handlers: message for stderr and exit code, like the real tool."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


# Plain classes, not dataclasses: each fake command is a new interpreter, and importing
# dataclasses (with inspect) was a sixth of its CPU time.
class Result:
    def __init__(self, rc: int = 0, out: list[str] | None = None, err: list[str] | None = None,
                 submitted: int | None = None) -> None:
        self.rc = rc
        self.out = [] if out is None else out
        self.err = [] if err is None else err
        self.submitted = submitted  # job id created by a submission command


class Option:
    def __init__(self, dest: str, takes_value: bool = True, multi: bool = False) -> None:
        self.dest = dest
        self.takes_value = takes_value
        self.multi = multi


def parse(argv: list[str], options: dict[str, Option], prog: str,
          stop_at_positional: bool = True, unknown: Callable[[str], str] | None = None,
          unknown_rc: int = 1, joined: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Parse `--name=value`, `--name value`, `-x value` and (``joined``) `-xvalue` forms.

    Positional arguments stop option parsing (the script and its arguments
    follow), as for sbatch/qsub.  Unknown options raise UsageError with
    ``unknown(arg)`` and exit code ``unknown_rc``, as the real tool prints them.
    """
    opts: dict[str, Any] = {}
    pos: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            pos.extend(argv[i + 1:])
            break
        if not arg.startswith("-") or arg == "-":
            if stop_at_positional:
                pos.extend(argv[i:])
                break
            pos.append(arg)
            i += 1
            continue
        name, value = arg, None
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        opt = options.get(name)
        if opt is None and joined and not arg.startswith("--") and len(arg) > 2 and arg[:2] in options:
            opt, name, value = options[arg[:2]], arg[:2], arg[2:]  # -Jname
            if not opt.takes_value:
                opt = None
        if opt is None:
            raise UsageError(unknown(arg) if unknown else f"{prog}: unrecognized option '{arg}'",
                             rc=unknown_rc)
        if opt.takes_value and value is None:
            if i + 1 >= len(argv):
                raise UsageError(f"{prog}: option '{name}' requires an argument")
            i += 1
            value = argv[i]
        elif not opt.takes_value:
            if value is not None:
                raise UsageError(f"{prog}: option '{name}' doesn't allow an argument")
            value = True
        if opt.multi:
            opts.setdefault(opt.dest, []).append(value)
        else:
            opts[opt.dest] = value
        i += 1
    return opts, pos


def user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back like the tools do
        return str(os.getuid())


def state_path() -> str:
    # Baked into the installed script first: jobs inherit environments, so an
    # env var could point a job's own squeue call at another queue.
    path = getattr(sys.modules["__main__"], "STATE_PATH", "") or os.environ.get(
        "DUMMY_QUEUES_STATE", "")
    if not path:
        sys.stderr.write("dummy_queues: no state file configured\n")
        sys.exit(2)
    return path


CURRENT_PATH = ""  # state file of the command being run (handlers write spool files beside it)
Handler = Callable[[list[str], dict[str, Any], float], Result]


def run(command: str, handler: Handler, messages: dict[str, tuple[str, int]],
        path: str | None = None, argv: list[str] | None = None) -> int:
    """Run one fake command invocation; returns its exit code.

    messages: mode -> (stderr text, rc) for "fail" (controller down) and
    "lose_id" (submission accepted, id lost; "late" prints the same).
    """
    global CURRENT_PATH
    path = CURRENT_PATH = path or state_path()
    argv = list(sys.argv[1:] if argv is None else argv)
    store = _state.Store(path)
    fault: dict[str, Any] | None = None
    result = Result()
    with store.edit() as state:
        now = time.time()
        _state.record_call(state, command, argv)
        spec = state["faults"]["commands"].get(command)
        if spec and spec["times"] > 0:
            spec["times"] -= 1
            fault = dict(spec)
            if fault["mode"] == "hang":
                state["hanging"].append({"pid": os.getpid(),
                                         "pstart": _state.proc_start_time(os.getpid())})
        if fault is None or fault["mode"] in ("garble", "lose_id", "late"):
            try:
                result = handler(argv, state, now)
            except UsageError as exc:
                result = Result(rc=exc.rc, err=[str(exc)])
            if fault is not None and fault["mode"] == "late" and result.submitted is not None:
                _state.delay_job(state, result.submitted, now + float(fault["seconds"]))
            _state.schedule(state, path, now)
    if fault is not None:
        mode = fault["mode"]
        if mode in ("fail", "hang"):
            if mode == "hang":
                # Outside the lock: a hung controller must not block the queue.
                time.sleep(float(fault.get("seconds") or 60.0))
            text, rc = messages["fail"]
            result = Result(rc=rc, err=[text])
        elif mode == "garble" and result.rc == 0:
            result.out = [GARBLED]
        elif mode in ("lose_id", "late") and result.submitted is not None:
            text, rc = messages["lose_id"]
            result = Result(rc=rc, err=[text] if text else [])
    if result.out:
        sys.stdout.write("\n".join(result.out) + "\n")
    if result.err:
        sys.stderr.write("\n".join(result.err) + "\n")
    sys.stdout.flush()
    return result.rc


def dispatch(commands: dict[str, Callable[[], int]]) -> None:
    """Entry point of the installed scripts: pick the command by argv[0]."""
    name = os.path.basename(sys.argv[0])
    func = commands.get(name)
    if func is None:
        sys.stderr.write(f"dummy_queues: unknown command {name}\n")
        sys.exit(2)
    sys.exit(func())


def compress(ids: list[int], step: int = 1, sep: str = ",", fmt: str = "{a}-{b}") -> str:
    """Compress sorted ints into ranges: [1,2,3,7] -> '1-3,7'."""
    parts, i = [], 0
    ids = sorted(ids)
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] - ids[j] == step:
            j += 1
        if j > i:
            parts.append(fmt.format(a=ids[i], b=ids[j], s=step))
        else:
            parts.append(str(ids[i]))
        i = j + 1
    return sep.join(parts)


def env_of_job_minimal(src: dict[str, str]) -> dict[str, str]:
    """The environment SGE/PBS give a job that was submitted without -V."""
    home = src.get("HOME") or os.path.expanduser("~")
    name = src.get("USER") or src.get("LOGNAME") or user()
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "USER": name,
            "LOGNAME": name, "SHELL": src.get("SHELL", "/bin/sh")}
