"""Shared fixtures: the backends every contract test runs on.

A backend joins the shared suite by adding a factory to BACKENDS (or, for backends that need a
fixture such as a dummy queue, to ``pool_factory`` below).
"""
from __future__ import annotations

import os

import pytest

import poolparty_raster as pp

BACKENDS = ["serial", "local"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def make_pool(backend, tmp_path, request):
    """``make_pool(**options)`` builds a pool of the parametrised backend with its work_dirs
    under tmp_path; cluster backends get their dummy queue fixture."""
    os.environ["POOLPARTY_RASTER_WORK_DIR_ROOT"] = str(tmp_path / "work")
    pools = []

    def factory(**options):
        options.setdefault("polling_interval", 0.5)
        if backend == "serial":
            pool = pp.SerialPool()
        elif backend == "local":
            pool = pp.LocalPool(2, **options)
        else:
            factory_fn = request.getfixturevalue(f"{backend}_factory")
            pool = factory_fn(**options)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.terminate()
    os.environ.pop("POOLPARTY_RASTER_WORK_DIR_ROOT", None)
