"""install() and the DummyQueue handle that tests use to steer a fake cluster."""
from __future__ import annotations

import os
import signal
import stat
import sys
import time
from typing import Any

from . import _state

COMMANDS = {"slurm": ("sbatch", "squeue", "scancel", "scontrol", "sinfo"),
            "sge": ("qsub", "qstat", "qdel", "qconf", "qacct"),
            "pbs": ("qsub", "qstat", "qdel", "qselect"),
            "lsf": ("bsub", "bjobs", "bkill", "badmin"),
            "htcondor": ("condor_submit", "condor_q", "condor_history", "condor_rm")}
COMMAND_MODES = ("fail", "hang", "garble", "lose_id", "late")


class DummyQueue:
    """Handle on one installed dummy queue (its bin directory and state file)."""

    def __init__(self, directory: str, scheduler: str, state_path: str) -> None:
        self.directory = os.path.abspath(directory)
        self.scheduler = scheduler
        self.state_path = os.path.abspath(state_path)
        self._store = _state.Store(self.state_path)

    def __repr__(self) -> str:
        return f"DummyQueue({self.scheduler!r}, {self.directory!r})"

    # ------------------------------------------------------------ inspection
    def state(self) -> dict[str, Any]:
        """A snapshot of the whole state file (read-only copy)."""
        return self._store.read()

    @property
    def calls(self) -> list[dict[str, Any]]:
        """Every command invocation: {"time", "command", "argv"}, oldest first."""
        return self._store.read()["calls"]

    @property
    def submissions(self) -> list[dict[str, Any]]:
        """Every accepted submission: {"time", "command", "argv", "job_id", "tasks", "name"}."""
        return self._store.read()["submissions"]

    def calls_to(self, command: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["command"] == command]

    def jobs(self) -> list[dict[str, Any]]:
        """One dict per job element still known to the queue (finished ones too).

        Keys: key, job_id, task, name, user, state (PENDING HELD ERROR RUNNING
        COMPLETED FAILED CANCELLED TIMEOUT OUT_OF_MEMORY NODE_FAIL VANISHED), reason,
        exit_code, signal, submit_time, start, end.
        """
        st = self._store.read()
        out = []
        for key, elem in st["elements"].items():
            job = st["jobs"][str(elem["job"])]
            out.append({"key": key, "job_id": elem["job"], "task": elem["task"],
                        "name": job["name"], "user": job["user"], "state": elem["state"],
                        "reason": elem.get("reason"), "exit_code": elem.get("exit_code"),
                        "signal": elem.get("signal"), "submit_time": job["submit_time"],
                        "start": elem["start"], "end": elem["end"]})
        return out

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Poll (bounded) until nothing is PENDING or RUNNING; True if reached.

        Held and error-state elements do not count: they never progress alone.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(j["state"] in ("PENDING", "RUNNING") for j in self.jobs()):
                return True
            time.sleep(0.02)
        return False

    # ------------------------------------------------------------ faults
    def _add_fault(self, kind: str, **fault: Any) -> None:
        with self._store.edit() as st:
            st["faults"].setdefault(kind, []).append(fault)  # a state file of an older dummy

    def inject_error_state(self, task: int | None = None, name: str | None = None,
                           count: int = 1, reason: str | None = None) -> None:
        """The next `count` matching elements land in an error state instead of running.

        SLURM: PENDING with reason `launch failed requeued held` (or `reason`,
        e.g. "JobHeldAdmin"); SGE: Eqw; PBS: H; LSF: PSUSP; HTCondor: held (JobStatus 5,
        its starter failed on the node by default).  They stay until cancelled.
        task: array task id as the scheduler numbers it; name: job name or glob.
        """
        if reason is None:
            reason = {"slurm": "launch failed requeued held",
                      "sge": "exit_status of job start = 100",
                      "lsf": "The job was suspended by LSF admin or root while pending",
                      "htcondor": _htcondor_stuck_reason(),
                      }.get(self.scheduler, "")
        self._add_fault("error_state", task=task, name=name, count=count, reason=reason)

    def inject_vanish(self, task: int | None = None, name: str | None = None,
                      count: int = 1) -> None:
        """Matching elements disappear without running (SLURM shows NODE_FAIL in -t all)."""
        self._add_fault("vanish", task=task, name=name, count=count)

    def inject_oom(self, task: int | None = None, name: str | None = None,
                   count: int = 1) -> None:
        """The next `count` matching elements are killed for their memory as they start (their
        command does not run), ending as the scheduler tells it: SLURM OUT_OF_MEMORY; PBS
        Exit_status -27; HTCondor held with HoldReasonCode 34 (subcode 102); LSF EXIT, exit
        137, exit_reason TERM_MEMLIMIT.  Grid Engine has none:
        its h_vmem is a limit on allocations, which fail inside the job (a MemoryError)."""
        if self.scheduler == "sge":
            raise ValueError("Grid Engine kills no job for its memory: h_vmem makes the job's "
                             "own allocations fail (a MemoryError in Python)")
        self._add_fault("oom", task=task, name=name, count=count)

    def inject_timeout(self, seconds: float, task: int | None = None, name: str | None = None,
                       count: int = 1) -> None:
        """Matching elements are killed `seconds` after they start (SLURM TIMEOUT; HTCondor
        holds them, HoldReasonCode 47, as its allowed_execute_duration does)."""
        self._add_fault("timeout", task=task, name=name, count=count, seconds=float(seconds))

    def inject_slow(self, seconds: float, task: int | None = None, name: str | None = None,
                    count: int = 1) -> None:
        """Matching elements run `seconds` longer than their command takes (a slow node: they
        show as running, and start the command late)."""
        self._add_fault("slow", task=task, name=name, count=count, seconds=float(seconds))

    def inject_command_failure(self, command: str, times: int = 1, mode: str = "fail",
                               seconds: float = 60.0) -> None:
        """The next `times` calls of `command` misbehave.

        fail: controller-down message on stderr, non-zero exit, nothing done.
        hang: sleeps `seconds` (outside the lock), then fails like "fail".
        garble: does its work, but stdout is one garbled line (rc 0).
        lose_id: (sbatch/qsub) job is created, but no id is printed and rc != 0.
        late: (sbatch/qsub) as lose_id, but the job shows in no listing, and does not run,
            until the first command `seconds` later: a busy controller that queued the request.
        """
        if mode not in COMMAND_MODES:
            raise ValueError(f"mode must be one of {COMMAND_MODES}")
        if command not in COMMANDS[self.scheduler]:
            raise ValueError(f"{self.scheduler} has no command {command!r}")
        with self._store.edit() as st:
            st["faults"]["commands"][command] = {"mode": mode, "times": int(times),
                                                 "seconds": float(seconds)}

    def clear_faults(self) -> None:
        with self._store.edit() as st:
            st["faults"] = {"error_state": [], "vanish": [], "timeout": [], "slow": [], "oom": [],
                            "commands": {}}

    def set_limits(self, max_array_size: int | None = None,
                   max_jobs_per_user: int | None = None, max_job_count: int | None = None,
                   min_job_age: float | None = None, slots: int | None = None,
                   kill_wait: float | None = None, lsf_json: bool | None = None) -> None:
        """Change site limits; None leaves a limit as it is (use 0 for no per-user cap).
        lsf_json=False: an LSF before 10.1, whose bjobs has no -json."""
        with self._store.edit() as st:
            conf = st["cluster"]
            for key, value in (("lsf_json", lsf_json), ("max_array_size", max_array_size),
                               ("max_job_count", max_job_count),
                               ("min_job_age", min_job_age), ("slots", slots),
                               ("kill_wait", kill_wait)):
                if value is not None:
                    conf[key] = value
            if max_jobs_per_user is not None:
                conf["max_jobs_per_user"] = max_jobs_per_user or None

    # ------------------------------------------------------------ teardown
    def kill_all(self) -> None:
        """Kill every running job's process group and every hanging command."""
        with self._store.edit() as st:
            now = time.time()
            for elem in st["elements"].values():
                if elem["state"] == "RUNNING":
                    _state.kill_group(elem["pid"], elem["pstart"], signal.SIGKILL)
                    _state.finish(elem, "CANCELLED", now, exit_code=0, signal=9)
            for elem in st["elements"].values():
                if elem["state"] in ("PENDING", "HELD", "ERROR"):
                    _state.finish(elem, "CANCELLED", now, exit_code=0, signal=0)
            for proc in st["hanging"]:
                if _state.is_alive(proc["pid"], proc["pstart"]):
                    os.kill(proc["pid"], signal.SIGKILL)
            st["hanging"] = []


def _htcondor_stuck_reason() -> str:
    from .htcondor import STARTER_FAILED
    return STARTER_FAILED


SCRIPT = """#!{python}
# Fake {name} installed by dummy_queues (state: {state}).
import sys
sys.path.insert(0, {parent!r})
STATE_PATH = {state!r}
from dummy_queues.{module} import main
main()
"""


def install(directory: str | os.PathLike, scheduler: str = "slurm",
            state_path: str | os.PathLike | None = None, slots: int = 4,
            **limits: Any) -> DummyQueue:
    """Write fake scheduler commands into `directory`; put it first on PATH to use them.

    limits: max_array_size, max_jobs_per_user, max_job_count, min_job_age,
    kill_wait, hostname, server.  An existing state file is reused.
    """
    if scheduler not in COMMANDS:
        raise ValueError(f"scheduler must be one of {sorted(COMMANDS)}")
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    state_path = os.path.abspath(state_path or os.path.join(directory, _state.STATE_NAME))
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    unknown = set(limits) - set(_state.DEFAULT_CLUSTER)
    if unknown:
        raise TypeError(f"unknown limits: {sorted(unknown)}")
    store = _state.Store(state_path)
    with store.lock:
        if not os.path.exists(state_path):
            store.save(_state.new_state(scheduler, slots=slots, **limits))
    for name in COMMANDS[scheduler]:
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(SCRIPT.format(python=sys.executable, name=name, state=state_path,
                                   parent=_state.PKG_PARENT, module=scheduler))
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return DummyQueue(directory, scheduler, state_path)
