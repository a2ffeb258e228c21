"""The "poolparty" joblib backend: joblib's Parallel runs on any pool, its batches sent
together as one map."""
from __future__ import annotations

import importlib
import sys

import pytest

import poolparty_raster as pp

joblib = pytest.importorskip("joblib", reason="joblib is an optional extra: "
                                              "pip install poolparty_raster[joblib]")
from poolparty_raster.joblib_backend import PoolBackend  # noqa: E402  (after the skip)


pytestmark = pytest.mark.backends(["local", "local_workers", "dummy_slurm_array"])


@pytest.fixture
def pool(make_pool):
    return make_pool()


def square(x):
    return x * x


def fails_at_three(x):
    if x == 3:
        raise KeyError(x)
    return x


def test_parallel_runs_on_the_pool_in_input_order(pool):
    with joblib.parallel_config(backend="poolparty", pool=pool):
        assert joblib.Parallel()(joblib.delayed(square)(x) for x in range(40)) == \
            [x * x for x in range(40)]
        assert joblib.Parallel(n_jobs=3, batch_size=4)(
            joblib.delayed(square)(x) for x in range(25)) == [x * x for x in range(25)]


def test_a_tasks_exception_reaches_the_caller(pool):
    with joblib.parallel_config(backend="poolparty", pool=pool):
        with pytest.raises(KeyError):
            joblib.Parallel()(joblib.delayed(fails_at_three)(x) for x in range(8))


def test_return_as_generator(pool):
    with joblib.parallel_config(backend="poolparty", pool=pool):
        results = joblib.Parallel(return_as="generator_unordered")(
            joblib.delayed(square)(x) for x in range(12))
        assert sorted(results) == [x * x for x in range(12)]


def test_a_parallel_call_is_one_sbatch(dummy_slurm):
    pool = pp.SlurmArrayPool(polling_interval=0.5, filesystem_lag=0.5, progress=False)
    try:
        with joblib.parallel_config(backend="poolparty", pool=pool):
            assert joblib.Parallel()(
                joblib.delayed(square)(x) for x in range(200)) == [x * x for x in range(200)]
    finally:
        pool.terminate()
    # joblib dispatches its batches in one loop, which the executor's linger groups into a map.
    # A loop slowed past the linger by a loaded machine may split them once or twice, never
    # into a map per batch.
    assert 1 <= len(dummy_slurm.calls_to("sbatch")) <= 3


def test_a_pre_dispatch_given_is_kept(dummy_slurm):
    """Batches dispatched a few at a time, as asked: more than one map, all results right."""
    pool = pp.SlurmArrayPool(polling_interval=0.5, filesystem_lag=0.5, progress=False)
    try:
        with joblib.parallel_config(backend="poolparty", pool=pool):
            assert joblib.Parallel(n_jobs=2, pre_dispatch=2)(
                joblib.delayed(square)(x) for x in range(6)) == [x * x for x in range(6)]
    finally:
        pool.terminate()
    assert len(dummy_slurm.calls_to("sbatch")) > 1


def test_n_jobs_follows_the_pool():
    backend = PoolBackend(pp.LocalPool(3, progress=False))
    assert backend.effective_n_jobs(-1) == 3
    assert backend.effective_n_jobs(None) == 3
    assert backend.effective_n_jobs(-2) == 2
    assert backend.effective_n_jobs(5) == 5
    # A pool of one slot still runs on the pool (joblib runs n_jobs=1 in this process).
    assert PoolBackend(pp.SerialPool()).effective_n_jobs(-1) == 2
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)


def test_without_a_pool_the_error_says_how_to_give_one():
    with joblib.parallel_config(backend="poolparty"):
        with pytest.raises(ValueError, match="pool=your_pool"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x) for x in range(3))


def test_without_joblib_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "joblib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "joblib.parallel", None)
    monkeypatch.delitem(sys.modules, "poolparty_raster.joblib_backend")
    with pytest.raises(ImportError, match=r"pip install poolparty_raster\[joblib\]"):
        importlib.import_module("poolparty_raster.joblib_backend")
