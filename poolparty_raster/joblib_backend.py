"""A joblib backend: ``Parallel(...)(delayed(f)(x) ...)`` on any pool of this package.

Importing this module registers the backend as "poolparty"::

    import joblib
    import poolparty_raster.joblib_backend  # noqa: F401  (registers "poolparty")

    with joblib.parallel_config(backend="poolparty", pool=pool):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

Each batch joblib dispatches (``batch_size``; "auto" is joblib's own auto-batching) is one
call of a :class:`~poolparty_raster.executor.PoolExecutor`, and the batches dispatched
together run as one map of the pool. A map costs a scheduler submission, so joblib's default
``pre_dispatch`` (a few batches ahead, then one more as each finishes: a map each) becomes
"all" here: the whole input is dispatched at once, as ``pool.map`` takes it. Another
``pre_dispatch`` given to Parallel is kept (then each refill is a map of its own).
"""
from __future__ import annotations

import inspect
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

try:
    from joblib.parallel import (AutoBatchingMixin, Parallel, ParallelBackendBase,
                                 register_parallel_backend)
except ImportError as exc:  # joblib is an optional extra
    raise ImportError("poolparty_raster's joblib backend needs joblib: "
                      "pip install poolparty_raster[joblib]") from exc

from poolparty_raster.executor import PoolExecutor

if TYPE_CHECKING:
    from poolparty_raster.pools.base import Pool

BACKEND_NAME = "poolparty"
_JOBLIB_PRE_DISPATCH = inspect.signature(Parallel).parameters["pre_dispatch"].default


class PoolBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ParallelBackendBase on a pool: ``pool`` is required (given through
    ``joblib.parallel_config(backend="poolparty", pool=...)``, or to this constructor for
    ``Parallel(backend=PoolBackend(pool))``); ``linger`` is the executor's (seconds)."""

    # Parallel() without n_jobs uses every slot of the pool.
    default_n_jobs = -1
    supports_retrieve_callback = True
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, pool: Pool | None = None, *, linger: float | None = None,
                 nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 **backend_kwargs: Any):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self.pool = pool
        self._linger = linger
        self._executor: PoolExecutor | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: ``n_jobs`` as given, and for a negative one (or None)
        the pool's parallelism counted as joblib counts CPUs (-1: all, -2: all but one).
        Never 1 for a negative n_jobs: joblib runs n_jobs=1 in this process, not on the pool."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if self.pool is None:
            raise ValueError(f"the {BACKEND_NAME!r} joblib backend needs a pool: "
                             f"joblib.parallel_config(backend={BACKEND_NAME!r}, pool=your_pool)")
        if n_jobs is None or n_jobs < 0:
            return max(self.pool.parallelism + 1 + (n_jobs or -1), 2)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **backend_kwargs: Any) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if parallel is not None and parallel.pre_dispatch == _JOBLIB_PRE_DISPATCH:
            parallel.pre_dispatch = "all"  # one map, not a map per refill (module docstring)
        self._executor = self._new_executor()
        return n_jobs

    def _new_executor(self) -> PoolExecutor:
        assert self.pool is not None  # effective_n_jobs checked it
        if self._linger is None:
            return PoolExecutor(self.pool)
        return PoolExecutor(self.pool, linger=self._linger)

    def submit(self, func: Callable[[], Any], callback: Callable[[Future], Any] | None = None) -> Future:
        """One joblib batch as one call of the executor; ``callback`` gets its future."""
        assert self._executor is not None, "configure() comes first"
        future = self._executor.submit(_Batch(func))
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call raised: cancel the batches not yet sent to the pool (those sent run to
        their end; their results are dropped)."""
        self._shutdown()
        if ensure_ready:
            self._executor = self._new_executor()

    def terminate(self) -> None:
        """Parallel's end: its batches have returned (or abort_everything came first), and the
        maps that carried them finish too (their summary line, their work_dir removed)
        before Parallel returns."""
        self._shutdown(wait=True)
        self.reset_batch_stats()

    def _shutdown(self, wait: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None


register_parallel_backend(BACKEND_NAME, PoolBackend)


class _Batch:
    """A joblib batch as the executor's call, named after its calls' function (joblib batches
    one function's calls): the progress label looks through ``func`` of this package's
    wrappers."""

    def __init__(self, batch: Callable[[], Any]):
        self.batch = batch

    @property
    def func(self) -> Any:
        items = getattr(self.batch, "items", None)  # joblib's BatchedCalls: (func, args, kwargs)
        return items[0][0] if items else self.batch

    def __call__(self) -> Any:
        return self.batch()
