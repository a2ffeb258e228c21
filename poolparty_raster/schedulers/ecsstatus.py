"""Amazon ECS: what ``describe_tasks`` says of a task, as a status: its lastStatus, and in
words why it stopped (an out-of-memory kill, a spot interruption, a lost host, a container
that could not start).

Facts this module is built on (the ECS API reference, "Amazon ECS task lifecycle" and "stopped
tasks errors"): a task goes PROVISIONING, PENDING, ACTIVATING, RUNNING, DEACTIVATING, STOPPING,
DEPROVISIONING, STOPPED (DELETED once gone); a stopped task has a ``stopCode``
(``TaskFailedToStart``, ``EssentialContainerExited``, ``UserInitiated``, ``SpotInterruption``,
``TerminationNotice``, ...) and a ``stoppedReason``, and each container an ``exitCode`` and a
``reason`` (``OutOfMemoryError: Container killed due to memory usage``).
"""
from __future__ import annotations

import json
from typing import Any

from poolparty_raster.errors import SchedulerOutputError
from poolparty_raster.schedulers.awscommon import fatal_start, spot_or_host_loss
from poolparty_raster.schedulers.base import TaskState, TaskStatus

_PENDING = {"PROVISIONING", "PENDING", "ACTIVATING"}
_RUNNING = {"RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"}
_ENDED = {"STOPPED", "DELETED"}


def _container(task: dict[str, Any], name: str | None) -> dict[str, Any]:
    containers = task.get("containers") or [{}]
    return next((c for c in containers if c.get("name") == name), containers[0])


def describe_stopped(task: dict[str, Any], container_name: str | None = None) -> str:
    """Why a task stopped, in words that name OOM kills and spot interruptions."""
    container = _container(task, container_name)
    code, why = container.get("exitCode"), container.get("reason", "")
    stop_code, stopped = task.get("stopCode", ""), task.get("stoppedReason", "")
    words = [stop_code, stopped, f"exit code {code}" if code is not None else "", why]
    if "OutOfMemory" in why:  # exit 137 alone is any SIGKILL, a stop_task's too
        words.insert(0, f"out of memory (container killed{', exit 137' if code == 137 else ''}):")
    if stop_code == "SpotInterruption":
        words.insert(0, "spot interruption:")
    elif stop_code == "TerminationNotice":
        words.insert(0, "retired by AWS (termination notice):")
    elif loss := spot_or_host_loss(stopped):
        words.insert(0, loss)
    return " ".join(w for w in words if w)


def classify_task(task: dict[str, Any], container_name: str | None = None) -> TaskStatus:
    """describe_tasks' task -> a status; an unknown lastStatus is quoted, never guessed."""
    last = task.get("lastStatus", "")
    if last in _PENDING:
        return TaskStatus(TaskState.PENDING, last)
    if last in _RUNNING:
        return TaskStatus(TaskState.RUNNING, last)
    if last not in _ENDED:
        raise SchedulerOutputError(f"ecs describe_tasks: unknown lastStatus {last!r} of "
                                   f"{task.get('taskArn')}: {json.dumps(task, default=str)[:500]}")
    reason = describe_stopped(task, container_name)
    if task.get("stopCode") == "TaskFailedToStart" and fatal_start(reason):
        return TaskStatus(TaskState.FATAL, reason)
    # The worker exits 0 only after its result is written: the engine then allows the shared
    # filesystem's directory cache time to show it before the chunk counts as lost.
    container = _container(task, container_name)
    # An out-of-memory kill is a memory request the same task outgrows again (retry_resources
    # cannot enlarge it here: a chunk's run_task token must ask for the same task).
    exceeded = "mem" if "OutOfMemory" in container.get("reason", "") else None
    return TaskStatus(TaskState.FINISHED, reason, succeeded=container.get("exitCode") == 0,
                      exceeded=exceeded)
