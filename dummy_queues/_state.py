"""The shared state file of a dummy queue and the scheduling step.

Every fake command and every job runner does one read-modify-write cycle of
``queue_state.json`` under an exclusive ``flock`` of ``queue_state.json.lock``.  The file is
always replaced atomically (temp file in the same directory, then ``os.replace``) so a
reader that does not take the lock still never sees a half-written file.

Every fake command is a new interpreter, and a scheduler is called at every poll: this
module takes the lock with fcntl rather than importing filelock, which was a third of each
command's CPU time.
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import importlib
import json
import os
import signal
import tempfile
import time
from typing import Any, Iterator

from . import _runner

STATE_NAME = "queue_state.json"
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ACTIVE = ("PENDING", "HELD", "ERROR", "RUNNING")
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "VANISHED")
# How a memory kill (inject_oom) ends an element where the scheduler's module does not say
# (its memory_kill): the kernel's OOM killer's SIGKILL (LSF's bjobs adds its exit_reason).
OOM_KILLED = {"state": "FAILED", "exit_code": 0, "signal": 9, "reason": "OutOfMemory"}

DEFAULT_CLUSTER: dict[str, Any] = {
    "slots": 4,
    "max_array_size": 1001,  # SLURM MaxArraySize; SGE max_aj_tasks; PBS max_array_size
    "max_job_count": 10000,
    "max_jobs_per_user": None,  # submitted (pending+running) per user; None = no cap
    "min_job_age": 300.0,  # seconds finished jobs stay visible (squeue -t all, qstat -x)
    "kill_wait": 1.0,  # SIGTERM -> SIGKILL grace (real SLURM KillWait is 5 s; kept short for tests)
    "hostname": "vm",
    "server": "pbsserver",
    "lsf_json": True,  # LSF's bjobs has -json (10.1 on); False: an older LSF
}


def new_state(scheduler: str, **cluster: Any) -> dict[str, Any]:
    """A fresh, empty state dict."""
    conf = dict(DEFAULT_CLUSTER)
    conf.update({k: v for k, v in cluster.items() if v is not None})
    return {
        "format": 1,
        "scheduler": scheduler,
        "cluster": conf,
        "next_id": 1,
        "jobs": {},
        "elements": {},
        "faults": {"error_state": [], "vanish": [], "timeout": [], "slow": [], "oom": [],
                   "commands": {}},
        "hanging": [],
        "delayed": [],  # jobs accepted but not yet seen (the "late" command fault)
        "calls": [],
        "submissions": [],
    }


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    """Hold an exclusive flock of ``path``: the lock filelock's FileLock takes, without its
    import (~35 ms of each fake command's start). Each holder opens the file itself, so
    threads exclude each other too. A stuck holder is ended by the package's command timeout
    or pytest-timeout, not here."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Store:
    """Locked, atomic access to one state file."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    @property
    def lock(self) -> contextlib.AbstractContextManager[None]:
        return _flock(self.path + ".lock")

    def load(self) -> dict[str, Any]:
        with open(self.path, encoding="utf-8") as fh:
            return json.load(fh)

    def save(self, state: dict[str, Any]) -> None:
        # No fsync: atomicity against concurrent readers is what matters here,
        # and an fsync per command would cost more than the whole command.
        fd, tmp = tempfile.mkstemp(prefix=".queue_state.", suffix=".tmp",
                                   dir=os.path.dirname(self.path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Yield the state under the lock; saved only if the block succeeds."""
        with self.lock:
            state = self.load()
            yield state
            self.save(state)

    def read(self) -> dict[str, Any]:
        # os.replace makes every version complete, so reading needs no lock.
        return self.load()


# ---------------------------------------------------------------- processes
def proc_start_time(pid: int) -> int | None:
    """Kernel start time of pid (guards against pid reuse), None if gone/zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if rest[0] in ("Z", "X"):  # a zombie has finished; its parent just has not reaped it
        return None
    return int(rest[19])


def is_alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and proc_start_time(pid) == start


def kill_group(pid: int | None, start: int | None, sig: int = signal.SIGTERM) -> None:
    """Signal the process group led by a runner (runners are session leaders)."""
    if is_alive(pid, start):
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)


# ---------------------------------------------------------------- faults
def take_fault(state: dict[str, Any], kind: str, job: dict[str, Any],
               elem: dict[str, Any]) -> dict[str, Any] | None:
    """Return (and count down) the first fault of `kind` matching an element."""
    for fault in state["faults"].get(kind, []):
        if fault["count"] <= 0:
            continue
        if fault.get("task") is not None and fault["task"] != elem["task"]:
            continue
        if fault.get("name") is not None and not fnmatch.fnmatchcase(job["name"], fault["name"]):
            continue
        fault["count"] -= 1
        return fault
    return None


# ---------------------------------------------------------------- scheduling
def adapter(scheduler: str) -> Any:
    """The scheduler module that knows each job's environment and output paths."""
    return importlib.import_module(f"{__package__}.{scheduler}")


def finish(elem: dict[str, Any], state_word: str, now: float, **extra: Any) -> None:
    elem.update(state=state_word, end=now, pid=None, **extra)


def cancel_element(elem: dict[str, Any], now: float) -> None:
    """A cancel as LSF's bkill and HTCondor's condor_rm do it: a running element's process
    group gets SIGTERM; it ends CANCELLED."""
    running = elem["state"] == "RUNNING"
    if running:
        kill_group(elem["pid"], elem["pstart"])
    finish(elem, "CANCELLED", now, exit_code=0, signal=15 if running else 0)


def end_element(elem: dict[str, Any], now: float, state: str, **extra: Any) -> None:
    """End a run: finished in ``state``, or stuck in an error state (HTCondor's holds)."""
    if state == "ERROR":
        elem.update(state="ERROR", pid=None, error_time=now, **extra)
    else:
        finish(elem, state, now, **extra)


def delay_job(state: dict[str, Any], jid: int, until: float) -> None:
    """Take a just-submitted job out of sight (listings, cancels, scheduling) until ``until``:
    a controller that queued the request and processes it later."""
    job = state["jobs"].pop(str(jid))
    keys = [key for key, elem in state["elements"].items() if elem["job"] == jid]
    state.setdefault("delayed", []).append(
        {"until": until, "job": job, "elements": {key: state["elements"].pop(key) for key in keys}})


def schedule(state: dict[str, Any], path: str, now: float | None = None) -> None:
    """Reveal delayed jobs that are due, reap dead runners, purge old records, start what the
    caps allow."""
    now = time.time() if now is None else now
    conf = state["cluster"]
    for delayed in [d for d in state.get("delayed", []) if d["until"] <= now]:
        state["delayed"].remove(delayed)
        state["jobs"][str(delayed["job"]["id"])] = delayed["job"]
        state["elements"].update(delayed["elements"])
    for elem in state["elements"].values():
        if elem["state"] == "RUNNING" and not is_alive(elem["pid"], elem["pstart"]):
            # The runner died without recording an end (killed from outside).
            finish(elem, "FAILED", now, exit_code=0, signal=9, reason="JobLaunchFailure")
    age = float(conf["min_job_age"])
    for key in [k for k, e in state["elements"].items()
                if e["state"] in FINISHED and now - (e["end"] or now) > age]:
        del state["elements"][key]
    live_jobs = {e["job"] for e in state["elements"].values()}
    for jid in [j for j in state["jobs"] if int(j) not in live_jobs]:
        for name in (state["jobs"][jid]["spool"], state["jobs"][jid].get("script")):
            with contextlib.suppress(OSError, TypeError):
                os.unlink(name)
        del state["jobs"][jid]
    materialize(state)
    _start_pending(state, path, now)


def materialize(state: dict[str, Any]) -> None:
    """HTCondor's max_materialize: a cluster's procs enter the queue in order while fewer than
    its limit are in it (idle, running or held); the others are not jobs yet."""
    limited = {jid: job for jid, job in state["jobs"].items() if job.get("materialize_limit")}
    if not limited:
        return
    procs: dict[str, dict[int, dict[str, Any]]] = {jid: {} for jid in limited}
    for elem in state["elements"].values():
        if str(elem["job"]) in procs:
            procs[str(elem["job"])][elem["task"]] = elem
    for jid, job in limited.items():
        def queued(task: int) -> bool:
            return task in procs[jid] and procs[jid][task]["state"] in ACTIVE
        in_queue = sum(1 for task in range(job["next_proc"]) if queued(task))
        while job["next_proc"] < job["procs"] and in_queue < job["materialize_limit"]:
            in_queue += queued(job["next_proc"])
            job["next_proc"] += 1


def running_counts(state: dict[str, Any]) -> tuple[int, dict[int, int]]:
    total, per_job = 0, {}
    for elem in state["elements"].values():
        if elem["state"] == "RUNNING":
            total += 1
            per_job[elem["job"]] = per_job.get(elem["job"], 0) + 1
    return total, per_job


def _start_pending(state: dict[str, Any], path: str, now: float) -> None:
    total, per_job = running_counts(state)
    free = int(state["cluster"]["slots"]) - total
    mod = None
    for key, elem in state["elements"].items():
        if free <= 0:
            break
        if elem["state"] != "PENDING":
            continue
        job = state["jobs"][str(elem["job"])]
        if job.get("materialize_limit") and elem["task"] >= job["next_proc"]:
            continue  # HTCondor: not materialized, not a job yet
        throttle = job.get("throttle")
        if throttle and per_job.get(elem["job"], 0) >= throttle:
            continue
        fault = take_fault(state, "error_state", job, elem)
        if fault is not None:
            elem.update(state="ERROR", reason=fault.get("reason"), error_time=now)
            continue
        if take_fault(state, "vanish", job, elem) is not None:
            finish(elem, "NODE_FAIL" if state["scheduler"] == "slurm" else "VANISHED",
                   now, reason="NodeDown")
            continue
        mod = mod or adapter(state["scheduler"])
        if take_fault(state, "oom", job, elem) is not None:
            # killed as it starts: before the job can have written anything
            elem["start"] = now
            kill = getattr(mod, "memory_kill", None)
            end_element(elem, now, **(kill(job) if kill else OOM_KILLED))
            continue
        info = mod.launch_info(state, job, elem)
        fault = take_fault(state, "timeout", job, elem)
        if fault is not None:
            limits = [x for x in (info.get("time_limit"), fault["seconds"]) if x is not None]
            info["time_limit"] = min(limits)
        fault = take_fault(state, "slow", job, elem)
        if fault is not None:
            info["delay"] = fault["seconds"]
        info["spool"] = job["spool"]
        info["kill_wait"] = state["cluster"]["kill_wait"]
        pid = _runner.spawn(path, key, info)
        elem.update(state="RUNNING", reason=None, pid=pid, pstart=proc_start_time(pid),
                    start=now, eid=info.get("eid", elem.get("eid")))
        free -= 1
        per_job[elem["job"]] = per_job.get(elem["job"], 0) + 1


def allocate_id(state: dict[str, Any], count: int = 1) -> int:
    jid = int(state["next_id"])
    state["next_id"] = jid + count
    return jid


def record_call(state: dict[str, Any], command: str, argv: list[str]) -> None:
    state["calls"].append({"time": time.time(), "command": command, "argv": argv})
    del state["calls"][:-20000]  # bounded, so a long session does not slow every command


def write_spool(path: str, jid: int, spec: dict[str, Any]) -> str:
    """Per-job spec (argv, env, cwd) beside the state; keeps the state small."""
    spool_dir = os.path.join(os.path.dirname(path), "spool")
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    spool = os.path.join(spool_dir, f"{jid}.json")
    fd, tmp = tempfile.mkstemp(dir=spool_dir, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(spec, fh)
    os.replace(tmp, spool)
    return spool


def copy_script(path: str, jid: int, script: str) -> str:
    """Snapshot a job script at submit time, as the real schedulers do."""
    spool_dir = os.path.join(os.path.dirname(path), "spool")
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    dest = os.path.join(spool_dir, f"{jid}.script")
    # 0700 from the start: it may carry the submitter's environment, as script.py does.
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with open(script, "rb") as src, os.fdopen(fd, "wb") as dst:
        dst.write(src.read())
    return dest


def script_argv(script: str, args: list[str], interpreter: str | None) -> list[str]:
    """How a spooled script is run: -S interpreter, else its #! line, else /bin/sh."""
    if interpreter:
        return [interpreter, script, *args]
    with open(script, "rb") as fh:
        first = fh.readline(256)
    if first.startswith(b"#!") and first[2:].strip():
        return [*first[2:].decode(errors="replace").split(), script, *args]
    return ["/bin/sh", script, *args]


def add_job(state: dict[str, Any], jid: int, job: dict[str, Any],
            tasks: list[int | None], hold: bool, now: float) -> None:
    """Register a job and one element per task (None = not an array)."""
    job.update(id=jid, submit_time=now)
    state["jobs"][str(jid)] = job
    for task in tasks:
        key = str(jid) if task is None else f"{jid}_{task}"
        state["elements"][key] = {
            "job": jid, "task": task, "state": "HELD" if hold else "PENDING",
            "reason": None, "eid": None, "pid": None, "pstart": None,
            "start": None, "end": None, "exit_code": None, "signal": None}


def active_count(state: dict[str, Any], user: str, per_job: bool = False) -> int:
    """Submitted (not finished) elements of a user, or jobs if per_job."""
    seen = set()
    n = 0
    for elem in state["elements"].values():
        if elem["state"] in ACTIVE and state["jobs"][str(elem["job"])]["user"] == user:
            if per_job:
                seen.add(elem["job"])
            else:
                n += 1
    return len(seen) if per_job else n
