"""Run multiprocessing.Pool-style maps, and RIOS-style raster processing, as jobs on SLURM,
Grid Engine, PBS or AWS, through nothing but a shared directory.

Names are imported on first use, so that a worker process, which needs only
``poolparty_raster.node``, starts without loading the driver's machinery.
"""
from __future__ import annotations

import importlib
from typing import Any

from poolparty_raster.registry import BACKENDS

# Each name and the module (under this package) that defines it; every backend's pool classes
# come from the registry, with the module of each.
_EXPORTS = {
    **{name: backend.pool_module.removeprefix("poolparty_raster.")
       for backend in BACKENDS for name in backend.pool_classes},
    "SerialPool": "serial", "PoolExecutor": "executor", "applier": "applier",
    "PoolPartyError": "errors", "RemoteTaskError": "errors", "RemoteTraceback": "errors",
    "SchedulerError": "errors", "SchedulerUnavailableError": "errors",
    "SchedulerOutputError": "errors", "SubmissionRefused": "errors", "TaskLostError": "errors",
    "MapTerminated": "errors", "WorkDirBusyError": "errors", "WorkDirMismatchError": "errors",
    "UnsafeWorkDirError": "errors", "WorkDirFullError": "errors", "open_work_dir": "debugging",
    "AutoPool": "autopool", "pool_from_profile": "profiles", "ProfileError": "profiles",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poolparty_raster' has no attribute {name!r}")
    imported = importlib.import_module(f"poolparty_raster.{module}")
    value = imported if name == module else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
