"""A RIOS-compatible raster applier: ``apply(userFunction, infiles, outfiles, otherArgs,
controls)`` runs a function over a raster block by block, in-process, on threads, or on any
multiprocessing.Pool-like pool (``poolparty_raster``'s local and cluster pools included).

Scripts written for ``rios.applier`` work after changing the import to
``from poolparty_raster import applier``.
"""
from poolparty_raster.applier.apply import apply
from poolparty_raster.applier.concurrency import ALL_KINDS, POOL_KINDS
from poolparty_raster.applier.controls import (BOUNDS_FROM_REFERENCE, CW_NONE, CW_PROFILE,
                                               CW_THREADS, DEFAULT_RESAMPLEMETHOD, DEFAULTFOOTPRINT,
                                               DEFAULTOVERLAP, DEFAULTWINDOWXSIZE,
                                               DEFAULTWINDOWYSIZE, INTERSECTION, UNION,
                                               ApplierControls, ConcurrencyStyle)
from poolparty_raster.applier.grid import ResampleNeededError
from poolparty_raster.applier.info import BlockInfo, Coord
from poolparty_raster.applier.structures import (ApplierBlockDefn, ApplierReturn,
                                                 BlockAssociations, FilenameAssociations,
                                                 OtherInputs, Timers)

globals().update({kind: kind for kind in POOL_KINDS})  # CW_SLURM, ...: see concurrency.py

__all__ = [
    "apply", "ApplierControls", "ConcurrencyStyle", "FilenameAssociations", "BlockAssociations",
    "OtherInputs", "ApplierBlockDefn", "ApplierReturn", "Timers", "BlockInfo", "Coord",
    "ResampleNeededError",
    "INTERSECTION", "UNION", "BOUNDS_FROM_REFERENCE", "DEFAULTWINDOWXSIZE", "DEFAULTWINDOWYSIZE",
    "DEFAULTOVERLAP", "DEFAULTFOOTPRINT", "DEFAULT_RESAMPLEMETHOD",
    *ALL_KINDS,
]
