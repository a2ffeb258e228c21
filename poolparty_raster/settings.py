"""A map's settings: the options every pool takes, whatever its scheduler, declared once.

Each option field of :class:`MapSettings` is a keyword of every pool's constructor: its name,
type, default and one line of help are read from here into the pools' signatures and into
``help()`` (pools/base.py). A scheduler's own options are the keywords of its class's
``__init__`` (schedulers/<name>.py), declared there once in the same way.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODES = ("array", "workers")
RESOURCE_KINDS = ("time", "mem")  # what a kill can say ran out (retry_resources' keys)


def option(default: Any, help: str) -> Any:
    """A field that is a pool option, with its one line of help (units included)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class MapSettings:
    """The options of a pool's maps; a pool resolves the defaults that depend on it (mode,
    python_path, where new work_dirs go) before it makes one."""

    work_dir: str | None = option(
        None, "the map's directory; default: a new one under $POOLPARTY_RASTER_WORK_DIR_ROOT, "
              "else the current directory (cluster pools) or the temporary one (local)")
    work_dir_root: str | None = option(
        None, "where maps without a work_dir make theirs; default: $POOLPARTY_RASTER_WORK_DIR_ROOT, "
              "else the current directory (cluster pools) or the temporary one (local)")
    keep_work_dir: bool = option(
        False, "keep the work_dir after a clean map (it is always kept after a failure)")
    mode: str | None = option(
        None, "'array': a job per chunk; 'workers': a few long-lived jobs that claim chunks "
              "(default: 'workers' for LocalPool, 'array' for cluster pools)")
    num_simultaneously_running_tasks: int | None = option(
        None, "cap on chunks running at once (the array throttle); None: no cap")
    max_num_resubmissions: int = option(
        3, "how often a chunk whose job died or stuck in an error state is resubmitted")
    retry_resources: Callable[[int, str], dict[str, str]] | dict[str, float] | None = option(
        None, "after a wall-time or memory kill: None fails the chunk at once; {'time': 2.0, "
              "'mem': 2.0} resubmits with that request multiplied (each time); a callable "
              "(attempt, 'time' or 'mem') -> {'time': ..., 'mem': ...} gives the next request")
    polling_interval: float = option(
        5.0, "upper bound of the adaptive interval between scheduler polls, in seconds")
    filesystem_lag: float | None = option(
        None, "seconds a finished chunk's result may take to show on the driver's filesystem "
              "before it counts as lost (default: 0 locally, 3 on clusters)")
    python_path: str | None = option(
        None, "the Python interpreter the jobs run (default: sys.executable)")
    job_name: str = option("pp", "prefix of the jobs' names (a hash of the map follows)")
    min_workers: int = option(
        1, "workers mode: the fewest workers that min_seconds_between_submissions may hold")
    max_workers: int | None = option(
        None, "workers mode: the most workers at once (default: the pool's parallelism)")
    min_seconds_between_submissions: float = option(
        0.0, "workers mode: seconds between two submissions of workers")
    slots_per_worker: int = option(
        1, "workers mode: chunks each worker job runs at once, each in a process of its own "
           "that sees one of the job's GPUs as its CUDA_VISIBLE_DEVICES")
    verbose: bool = option(False, "print scheduler trouble as it happens")
    progress: bool | None = option(
        None, "a tqdm.auto bar in a terminal or notebook, else a summary line a minute on "
              "stderr (default); True: always the bar; False: nothing")
    initializer: Callable[..., Any] | None = option(
        None, "called as initializer(*initargs) once in each worker process before its first "
              "task, as multiprocessing.Pool's (array mode: in each chunk's process)")
    initargs: tuple[Any, ...] = option((), "the arguments of initializer")
    maxtasksperchild: int | None = option(
        None, "chunks a worker process runs before a fresh one takes over (array mode: one "
              "always); None: as many as there are")

    def __post_init__(self) -> None:
        check_retry_form(self.retry_resources)
        if self.polling_interval <= 0:
            raise ValueError(f"polling_interval must be positive, not {self.polling_interval}")
        if self.max_num_resubmissions < 0:
            raise ValueError(f"max_num_resubmissions must be >= 0, not {self.max_num_resubmissions}")
        if self.num_simultaneously_running_tasks is not None and self.num_simultaneously_running_tasks < 1:
            raise ValueError("num_simultaneously_running_tasks must be at least 1 (or None)")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be 'array' or 'workers', not {self.mode!r}")
        if self.min_workers < 0 or (self.max_workers is not None
                                    and self.max_workers < max(1, self.min_workers)):
            raise ValueError(f"need 0 <= min_workers <= max_workers and max_workers >= 1, not "
                             f"min_workers={self.min_workers}, max_workers={self.max_workers}")
        if not isinstance(self.slots_per_worker, int) or self.slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be a positive int, "
                             f"not {self.slots_per_worker!r}")
        if self.slots_per_worker > 1 and self.mode == "array":  # None: the pool's, checked then
            raise ValueError(f"slots_per_worker={self.slots_per_worker} needs mode='workers': "
                             f"in array mode each chunk is a job of its own, with nothing to "
                             f"share its GPUs among")
        # As multiprocessing.Pool checks them (a float or a string is a ValueError there too).
        if self.maxtasksperchild is not None and (
                not isinstance(self.maxtasksperchild, int) or self.maxtasksperchild <= 0):
            raise ValueError(f"maxtasksperchild must be a positive int or None, "
                             f"not {self.maxtasksperchild!r}")
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError("initializer must be a callable")
        object.__setattr__(self, "initargs", tuple(self.initargs))  # any iterable, as there

    @property
    def throttle(self) -> int | None:
        return self.num_simultaneously_running_tasks


def check_retry_form(retry: Any) -> None:
    """Refuse a ``retry_resources`` that no kill could use."""
    if retry is None or callable(retry):
        return
    if not isinstance(retry, dict) or not retry:
        raise TypeError(f"retry_resources must be None, a callable or a dict such as "
                        f"{{'time': 2.0, 'mem': 2.0}}, not {retry!r}")
    for kind, factor in retry.items():
        if kind not in RESOURCE_KINDS:
            raise ValueError(f"retry_resources: {kind!r} is not one of {RESOURCE_KINDS}")
        if not isinstance(factor, (int, float)) or factor <= 1:
            raise ValueError(f"retry_resources[{kind!r}] must be a factor above 1, not {factor!r}")


def option_fields() -> list[dataclasses.Field[Any]]:
    """The fields of MapSettings that are pool options, in the order of the signatures."""
    return [f for f in dataclasses.fields(MapSettings) if "help" in f.metadata]
