"""Run multiprocessing.Pool-style maps, and RIOS-style raster processing, as jobs on SLURM,
Grid Engine, PBS or AWS, through nothing but a shared directory."""
from poolparty_raster.errors import (PoolPartyError, RemoteTaskError, RemoteTraceback,
                                     SchedulerError, SchedulerUnavailableError, TaskLostError,
                                     WorkDirBusyError, WorkDirMismatchError)
from poolparty_raster.pools import LocalPool
from poolparty_raster.serial import SerialPool

__all__ = [
    "LocalPool", "SerialPool",
    "PoolPartyError", "RemoteTaskError", "RemoteTraceback", "SchedulerError",
    "SchedulerUnavailableError", "TaskLostError", "WorkDirBusyError", "WorkDirMismatchError",
]
__version__ = "0.1.0"
