"""AutoPool: one script everywhere. The pool of the profile ``$POOLPARTY_RASTER_PROFILE``
names, else of the scheduler found on this machine, else a LocalPool (docs/profiles.md).

What "found" means, measured by nothing but PATH and the environment (no command is run):

- SLURM: its scheduler's commands (sbatch, squeue, scancel) are on PATH.
- Grid Engine and PBS Pro both call their commands qsub, qstat and qdel: the ``qsub`` first
  on PATH, the one a job would be submitted with, is Grid Engine's when ``qconf`` (which only
  Grid Engine has) sits in its directory, else PBS's (whose pool also needs ``qselect``).
- When SLURM and a qsub scheduler are both found, the one whose environment variables are set
  (SLURM_CLUSTER_NAME, SLURM_CONF, SLURM_JOB_ID; SGE_ROOT, SGE_CELL; PBS_SERVER, PBS_EXEC,
  PBS_HOME, PBS_CONF_FILE, PBS_JOBID) wins; if that does not decide, SLURM, and the message
  says what else was found and how to choose (a profile).
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from poolparty_raster.errors import SchedulerUnavailableError
from poolparty_raster.profiles import PROFILE_VARIABLE, build_pool, load_profile
from poolparty_raster.registry import BACKENDS, Backend

if TYPE_CHECKING:
    from poolparty_raster.pools.base import Pool

_BACKEND = {backend.name: backend for backend in BACKENDS}
# The schedulers AutoPool looks for, in the order that breaks a tie, with the name it says.
_SCHEDULERS = {"slurm": "SLURM", "sge": "Grid Engine", "pbs": "PBS"}
_ENVIRONMENT = {
    "slurm": ("SLURM_CLUSTER_NAME", "SLURM_CONF", "SLURM_JOB_ID"),
    "sge": ("SGE_ROOT", "SGE_CELL"),
    "pbs": ("PBS_SERVER", "PBS_EXEC", "PBS_HOME", "PBS_CONF_FILE", "PBS_JOBID"),
}


class Found(NamedTuple):
    """A scheduler this machine can submit to."""

    backend: str                   # its registry name
    evidence: str                  # what showed it, for the message
    environment: tuple[str, ...]   # its variables that are set


class AutoChoice(NamedTuple):
    """What AutoPool chose and why: ``pool.auto_choice``."""

    pool_class: str
    profile: str | None            # the profile used, if one was
    reason: str

    def __str__(self) -> str:
        return f"{self.pool_class} ({self.reason})"


def find_schedulers() -> list[Found]:
    """The schedulers this machine can submit to, in tie-breaking order (module docstring)."""
    found = []
    qsub = shutil.which("qsub")
    qsub_family = None
    if qsub is not None:
        beside = os.path.dirname(qsub)
        qsub_family = "sge" if shutil.which("qconf", path=beside) else "pbs"
    for name in _SCHEDULERS:
        if name != "slurm" and name != qsub_family:
            continue
        try:
            _scheduler_class(_BACKEND[name])().check_available()  # shutil.which, nothing run
        except SchedulerUnavailableError:
            continue
        environment = tuple(v for v in _ENVIRONMENT[name] if os.environ.get(v))
        evidence = ("sbatch on PATH" if name == "slurm" else
                    f"qsub at {qsub}, {'with' if name == 'sge' else 'no'} qconf beside it")
        found.append(Found(name, evidence + "".join(f", {v} set" for v in environment),
                           environment))
    return found


def AutoPool(**overrides: Any) -> Pool:  # noqa: N802 -- named as the pool classes are
    """A pool for wherever this script runs: the profile ``$POOLPARTY_RASTER_PROFILE`` names
    (an error if it cannot be read: a profile asked for never falls back), else the scheduler
    found on this machine (SLURM, Grid Engine, PBS), else a LocalPool. ``overrides`` are pool
    options (and ``work_dir_root``); give only those every pool takes unless a profile is set.
    The choice is printed to stderr, and kept as ``pool.auto_choice``."""
    profile_name = os.environ.get(PROFILE_VARIABLE)
    if profile_name:
        profile = load_profile(profile_name)
        pool = profile.make_pool(**overrides)
        choice = AutoChoice(type(pool).__name__, profile_name,
                            f"profile {profile_name!r} of {profile.path}, named by "
                            f"${PROFILE_VARIABLE}")
    else:
        backend, reason = _detected()
        pool_class = getattr(importlib.import_module(backend.pool_module), backend.pool_class)
        pool = build_pool(pool_class, overrides, f"AutoPool ({backend.pool_class})")
        choice = AutoChoice(backend.pool_class, None, reason)
    pool.auto_choice = choice  # type: ignore[attr-defined]
    print(f"poolparty_raster.AutoPool: {choice}", file=sys.stderr)
    return pool


def _detected() -> tuple[Backend, str]:
    """The backend the scheduler found runs on, and why (module docstring)."""
    found = find_schedulers()
    if not found:
        return _BACKEND["local"], (f"no SLURM, Grid Engine or PBS found on PATH and no "
                                   f"${PROFILE_VARIABLE} set")
    with_environment = [f for f in found if f.environment]
    chosen = (with_environment or found)[0]
    reason = f"{_SCHEDULERS[chosen.backend]} found: {chosen.evidence}"
    others = [_SCHEDULERS[f.backend] for f in found if f is not chosen]
    if others:
        reason += (f"; also found {', '.join(others)}: set ${PROFILE_VARIABLE} to a profile "
                   f"to choose")
    return _BACKEND[chosen.backend], reason


def _scheduler_class(backend: Backend) -> type:
    return getattr(importlib.import_module(backend.scheduler_module), backend.scheduler_class)
