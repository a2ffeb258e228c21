"""Workers mode with ``slots_per_worker=K``: a worker job that was given K GPUs runs K worker
loops at once, each an ordinary worker (its own process, badge, claims, result log and
heartbeat: workerloop.py) that sees one device of the job's through its own
``CUDA_VISIBLE_DEVICES``. The job's process starts them, and ends when all have ended.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

# Set in a slot's process: it runs one worker loop and starts no slots of its own. (A name
# under POOLPARTY_RASTER_WORKER: a node variable, so script.py's restored environment keeps it.)
SLOT_VARIABLE = "POOLPARTY_RASTER_WORKER_SLOT"


def slot_devices(environ: Mapping[str, str], slots: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``slots`` slots: the devices the scheduler
    listed for the job, one a slot. Unset, the job sees every device of its node (a site that
    gives whole nodes): the slots take 0..K-1. Listing fewer than K, the slots share the
    listed ones in turn, rather than take numbers outside the job's allocation (another job's
    GPUs, or none); listing none (""), no slot sees a GPU, as the job did not, and each
    still runs its chunks."""
    if "CUDA_VISIBLE_DEVICES" not in environ:
        return [str(i) for i in range(slots)]
    listed = [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    return [listed[i % len(listed)] if listed else "" for i in range(slots)]


def run_slots(script_path: str, argv: Sequence[str], slots: int) -> int:
    """Run ``slots`` worker processes of the job's script (with the job's arguments ``argv``)
    side by side, and wait for all. A slot that dies takes no other down: its claims are the
    driver's to release once the job has ended (workersmode.py). Returns 0, or the first
    failing slot's exit status (a signal's as the shell spells it), so that the scheduler
    shows the job failed."""
    import subprocess  # here: a worker without slots (every array job) does without it

    from poolparty_raster.schedulers import parentdeath

    job = os.getpid()

    def dies_with_job() -> None:
        # A slot orphaned by the job's process (killed alone) would claim on unseen by the
        # driver, which has released its claims once the job was gone.
        if not parentdeath.die_with_parent(signal.SIGTERM, job):
            os._exit(1)

    preexec = dies_with_job if parentdeath.can_die_with_parent() else None
    processes = [
        subprocess.Popen([sys.executable, script_path, *argv], stdin=subprocess.DEVNULL,
                         env={**os.environ, SLOT_VARIABLE: str(slot),
                              "CUDA_VISIBLE_DEVICES": device},
                         preexec_fn=preexec)
        for slot, device in enumerate(slot_devices(os.environ, slots))]
    codes = [process.wait() for process in processes]
    failed = [code if code > 0 else 128 - code for code in codes if code != 0]
    return failed[0] if failed else 0
