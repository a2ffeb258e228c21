"""ConcurrencyStyle: RIOS's description of how blocks are spread over workers, and the
compute worker kinds (CW_*), one per backend in the registry besides in-process, threads
and a site profile's pool."""
from __future__ import annotations

import warnings
from typing import Any

from poolparty_raster.registry import BACKENDS

# Compute worker kinds, strings as in RIOS: two run blocks in this process, and each backend
# in the registry adds the kind that runs them on its pool (CW_SUBPROC, CW_SLURM, ...).
CW_NONE = "CW_NONE"
CW_THREADS = "CW_THREADS"
# The pool a site profile describes (profiles.py): the script names no backend.
CW_PROFILE = "CW_PROFILE"
POOL_KINDS = tuple(backend.applier_kind for backend in BACKENDS)
ALL_KINDS = (CW_NONE, CW_THREADS, CW_PROFILE, *POOL_KINDS)
# RIOS scripts import the kinds by name: each backend's is a module-level name here too
# (CW_SLURM == "CW_SLURM"), which controls.py and the applier package re-export.
globals().update({kind: kind for kind in POOL_KINDS})

# RIOS's defaults for the options that only its network channel uses; a value other than
# these is something the user asked for, and is told it is ignored here.
_RIOS_TIMEOUTS = {"readBufferInsertTimeout": 10, "readBufferPopTimeout": 10,
                  "computeBufferInsertTimeout": 10, "computeBufferPopTimeout": 20,
                  "computeBarrierTimeout": 600}


class ConcurrencyStyle:
    """How blocks are spread over workers; RIOS's signature.

    numComputeWorkers: threads, or worker jobs for pool kinds (0: the pool's default).
    computeWorkerKind: one of the CW_* constants; CW_NONE runs every block in the calling
    process with nothing pickled; CW_PROFILE the pool of the site profile
    computeWorkerProfile names (None: the one $POOLPARTY_RASTER_PROFILE names; see
    docs/profiles.md), numComputeWorkers and computeWorkerExtraParams winning over the
    profile's options. singleBlockComputeWorkers: one block per pool task (RIOS's
    one-job-per-block meaning) instead of many. computeWorkerExtraParams: keyword arguments
    for the pool class's constructor; they win over what this style implies.

    Compute workers always read their own inputs here, and there is no network channel, so
    numReadWorkers, computeWorkersRead, haveSharedTemp, the buffer time-outs and the barrier
    time-out are accepted for compatibility and ignored (one warning names those that were
    set to something other than RIOS's defaults).
    """

    def __init__(self, numReadWorkers: int = 0, numComputeWorkers: int = 0,
                 computeWorkerKind: str = CW_NONE, computeWorkersRead: bool = False,
                 singleBlockComputeWorkers: bool = False, haveSharedTemp: bool = True,
                 readBufferInsertTimeout: float | None = 10,
                 readBufferPopTimeout: float | None = 10,
                 computeBufferInsertTimeout: float | None = 10,
                 computeBufferPopTimeout: float | None = 20,
                 computeBarrierTimeout: float | None = 600,
                 computeWorkerExtraParams: dict[str, Any] | None = None,
                 computeWorkerProfile: str | None = None):
        if computeWorkerKind not in ALL_KINDS:
            raise ValueError(f"unknown computeWorkerKind {computeWorkerKind!r}; "
                             f"expected one of {', '.join(ALL_KINDS)}")
        if numComputeWorkers < 0 or numReadWorkers < 0:
            raise ValueError("numComputeWorkers and numReadWorkers must be >= 0")
        if computeWorkerKind == CW_NONE and numComputeWorkers:
            raise ValueError("numComputeWorkers > 0 needs a computeWorkerKind other than CW_NONE")
        if computeWorkerProfile is not None and computeWorkerKind != CW_PROFILE:
            raise ValueError(f"computeWorkerProfile={computeWorkerProfile!r} needs "
                             f"computeWorkerKind=CW_PROFILE, not {computeWorkerKind}")
        self.numReadWorkers = numReadWorkers
        self.numComputeWorkers = numComputeWorkers
        self.computeWorkerKind = computeWorkerKind
        self.computeWorkersRead = computeWorkersRead
        self.singleBlockComputeWorkers = singleBlockComputeWorkers
        self.haveSharedTemp = haveSharedTemp
        self.computeWorkerExtraParams = dict(computeWorkerExtraParams or {})
        self.computeWorkerProfile = computeWorkerProfile
        given = dict(readBufferInsertTimeout=readBufferInsertTimeout,
                     readBufferPopTimeout=readBufferPopTimeout,
                     computeBufferInsertTimeout=computeBufferInsertTimeout,
                     computeBufferPopTimeout=computeBufferPopTimeout,
                     computeBarrierTimeout=computeBarrierTimeout)
        vars(self).update(given)
        ignored = [f"{k}={v!r}" for k, v in given.items() if v != _RIOS_TIMEOUTS[k]]
        if numReadWorkers:
            ignored.insert(0, f"numReadWorkers={numReadWorkers}")
        if ignored:
            warnings.warn(f"poolparty_raster.applier ignores {', '.join(ignored)}: compute "
                          "workers read their own inputs and there is no network channel, "
                          "so there are no read workers, buffers or barrier to time out",
                          UserWarning, stacklevel=2)


_STYLE_ATTRIBUTES = ("numReadWorkers", "numComputeWorkers", "computeWorkerKind",
                     "computeWorkersRead", "singleBlockComputeWorkers", "haveSharedTemp",
                     *_RIOS_TIMEOUTS, "computeWorkerExtraParams", "computeWorkerProfile")


def as_concurrency_style(style: Any) -> ConcurrencyStyle:
    """``style`` itself if it is this package's, else a ConcurrencyStyle made from its
    attributes (RIOS's ``rios.structures.ConcurrencyStyle`` has the same names; an
    attribute it lacks takes RIOS's default), so that it is checked as ours are."""
    if isinstance(style, ConcurrencyStyle):
        return style
    given = {name: getattr(style, name) for name in _STYLE_ATTRIBUTES if hasattr(style, name)}
    return ConcurrencyStyle(**given)
