"""CPython's own Pool tests, run against this package's pools.

The test classes (``_TestPool``, ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime``) are
imported from the interpreter's ``test`` package when the tests run: none of their code is
copied here. Each test runs against LocalPool in both modes, SlurmArrayPool on the dummy SLURM
and on the real SLURM, and SgePool on the real Grid Engine, with ``multiprocessing.Pool``
(which some of them call directly) swapped for that pool. The real schedulers' runs skip, saying
why, where none answers (and fail under POOLPARTY_REQUIRE_REAL=1, as in CI); all 31 tests take
about 120 s of test time on the CI machine's real SLURM and 60 s on its Grid Engine (under a
minute of wall time with ``-n 4``), so the whole set runs there, not a subset.
Only the tests that read multiprocessing's private attributes, and the one expecting a lambda
result to be unpicklable (cloudpickle carries it), are expected to fail.
"""
from __future__ import annotations

import multiprocessing
import unittest
import weakref

import pytest

mp_tests = pytest.importorskip(
    "test._test_multiprocessing",
    reason="this interpreter has no `test` package (Debian: install libpython3.X-testsuite), "
           "so CPython's Pool tests cannot run")

import poolparty_raster as pp  # noqa: E402  (after the skip: nothing to set up without them)

COMPAT_BACKENDS = ["local", "local_workers", "dummy_slurm_array", "real_slurm", "real_sge"]
pytestmark = pytest.mark.backends(COMPAT_BACKENDS)

# The runnable classes, made as CPython makes them (a mixin and unittest.TestCase) at module
# level: _test_traceback, a classmethod, travels to the node by reference to its class.


class PoolTests(mp_tests._TestPool, unittest.TestCase):
    TYPE = "processes"
    __test__ = False  # run by test_cpython_pool_test, on each pool


class PoolWorkerErrorsTests(mp_tests._TestPoolWorkerErrors, unittest.TestCase):
    TYPE = "processes"
    __test__ = False  # run by test_cpython_pool_test, on each pool


class PoolWorkerLifetimeTests(mp_tests._TestPoolWorkerLifetime, unittest.TestCase):
    TYPE = "processes"
    __test__ = False  # run by test_cpython_pool_test, on each pool


TEST_CLASSES = [PoolTests, PoolWorkerErrorsTests, PoolWorkerLifetimeTests]

# What cannot apply to a pool that is not multiprocessing's, with why.
EXPECTED_FAILURES = {
    "test_make_pool": "reads multiprocessing's private list of worker processes (pool._pool)",
    "test_pool_worker_lifetime": "reads pool._pool and calls pool._repopulate_pool()",
    "test_unpickleable_result": "expects a lambda result to be unpicklable; cloudpickle "
                                "carries it (an unpicklable result raises MaybeEncodingError: "
                                "test_contract.py)",
}


def cases() -> list:
    loader = unittest.TestLoader()
    params = []
    for cls in TEST_CLASSES:
        for name in loader.getTestCaseNames(cls):
            marks = ([pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[name])]
                     if name in EXPECTED_FAILURES else [])
            params.append(pytest.param(cls, name, marks=marks, id=f"{cls.__name__}.{name}"))
    return params


def _local(mode):
    def build(processes, **options):
        return pp.LocalPool(processes, mode=mode, **options)
    return build


# A cluster pool's nearest to multiprocessing's number of processes is its throttle.
def _slurm_array(processes, **options):
    return pp.SlurmArrayPool(num_simultaneously_running_tasks=processes, filesystem_lag=0.5,
                             **options)


def _sge_array(processes, **options):
    return pp.SgePool(num_simultaneously_running_tasks=processes, filesystem_lag=0.5, **options)


# What builds each backend's pool, and the dummy queue or real scheduler it needs (the
# fixtures of tests/conftest.py's BACKENDS, whose LocalPool already takes a number of
# processes by position).
BUILDERS = {"local": (None, _local("array")), "local_workers": (None, _local("workers")),
            "dummy_slurm_array": ("dummy_slurm", _slurm_array),
            "real_slurm": ("real_slurm", _slurm_array), "real_sge": ("real_sge", _sge_array)}


@pytest.fixture
def pool_factory(backend, request):
    """multiprocessing.Pool's signature, making this backend's pool. Pools are held weakly
    (test_resource_warning drops one and expects its ResourceWarning); those left are
    terminated at the end."""
    queue, build = BUILDERS[backend]
    if queue is not None:
        request.getfixturevalue(queue)
    pools = weakref.WeakSet()

    def factory(processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        pool = build(processes, initializer=initializer, initargs=initargs,
                     maxtasksperchild=maxtasksperchild, polling_interval=0.5, progress=False)
        pools.add(pool)
        return pool

    yield factory
    for pool in list(pools):
        pool.terminate()


@pytest.mark.parametrize(("test_class", "test_name"), cases())
def test_cpython_pool_test(test_class, test_name, pool_factory, monkeypatch):
    # Some tests make their pool with multiprocessing.Pool itself, the others with self.Pool.
    monkeypatch.setattr(test_class, "Pool", staticmethod(pool_factory), raising=False)
    monkeypatch.setattr(multiprocessing, "Pool", pool_factory)
    result = unittest.TestResult()
    unittest.TestSuite([test_class(test_name)]).run(result)  # with setUpClass/tearDownClass
    problems = [text for _, text in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    assert not result.skipped, result.skipped
