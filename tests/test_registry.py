"""The backend registry is consistent with the modules that read it: each backend's two faces
import under the names it gives, the package exports its pools, the worker filters its node
variables, the applier builds its pool for its kind, and its dummy runs the shared suite."""
from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import poolparty_raster as pp
import poolparty_raster.pools
from poolparty_raster import applier, node
from poolparty_raster.applier import concurrency, controls, poolfactory
from poolparty_raster.pools.base import Pool
from poolparty_raster.registry import BACKENDS, Backend
from poolparty_raster.schedulers.base import Scheduler

ALL_POOL_CLASSES = [name for backend in BACKENDS for name in backend.pool_classes]


def each_entry(test):
    """Run ``test(entry)`` for each registry entry (not ``backend``: conftest parametrises
    that name with the contract suite's backends)."""
    return pytest.mark.parametrize("entry", BACKENDS, ids=[b.name for b in BACKENDS])(test)


def test_names_kinds_pools_and_dummies_are_each_declared_once():
    for values in ([b.name for b in BACKENDS], [b.applier_kind for b in BACKENDS],
                   ALL_POOL_CLASSES, [b.dummy for b in BACKENDS if b.dummy is not None]):
        assert len(values) == len(set(values)), values


def test_each_pool_module_is_a_registered_backend():
    modules = {m.name for m in pkgutil.iter_modules(poolparty_raster.pools.__path__)}
    assert modules - {"base", "options"} == {b.name for b in BACKENDS}


@each_entry
def test_pool_classes_import_from_their_module_and_are_exported(entry: Backend):
    module = importlib.import_module(entry.pool_module)
    for name in entry.pool_classes:
        cls = getattr(module, name)
        assert issubclass(cls, Pool) and cls.__module__ == entry.pool_module
        assert getattr(pp, name) is cls and name in pp.__all__
        assert getattr(poolparty_raster.pools, name) is cls, (
            f"add `from {entry.pool_module} import {name}` to poolparty_raster/pools/__init__.py")
        assert name in poolparty_raster.pools.__all__


def test_the_pools_package_exports_only_registered_pools():
    assert sorted(poolparty_raster.pools.__all__) == sorted(ALL_POOL_CLASSES)


@each_entry
def test_scheduler_class_imports_from_its_module(entry: Backend):
    cls = getattr(importlib.import_module(entry.scheduler_module), entry.scheduler_class)
    assert issubclass(cls, Scheduler)


@each_entry
def test_node_variables_never_travel_to_a_worker(entry: Backend):
    own = {f"{prefix}SOMETHING": "node" for prefix in entry.node_variable_prefixes}
    own.update({name: "node" for name in entry.node_variables})
    assert node.transferable_environment({**own, "MY_SETTING": "1"}) == {"MY_SETTING": "1"}


def test_the_worker_reads_the_registry_without_importing_a_pool_or_a_scheduler():
    code = ("import json, sys, poolparty_raster.node; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('poolparty_raster.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(loaded) == ["poolparty_raster.node", "poolparty_raster.registry"]


@each_entry
def test_applier_kind_is_a_rios_style_name_that_builds_the_backends_pool(entry: Backend):
    kind = entry.applier_kind
    assert kind.startswith("CW_") and kind in concurrency.ALL_KINDS
    for module in (concurrency, controls, applier):
        assert getattr(module, kind) == kind
    assert kind in applier.__all__
    assert applier.ConcurrencyStyle(computeWorkerKind=kind).computeWorkerKind == kind
    pool_class = poolfactory.pool_class_for(kind)
    assert pool_class is getattr(importlib.import_module(entry.pool_module), entry.pool_class)


def test_the_pool_factory_finds_pools_without_the_packages_lazy_names(monkeypatch):
    asked: list[str] = []
    lazy = pp.__getattr__

    def spy(name: str):
        asked.append(name)
        return lazy(name)

    monkeypatch.setattr(pp, "__getattr__", spy)
    for name in ALL_POOL_CLASSES:  # names an earlier pp.<name> cached in the package
        monkeypatch.delitem(vars(pp), name, raising=False)
    for backend in BACKENDS:
        assert poolfactory.pool_class_for(backend.applier_kind).__name__ == backend.pool_class
    pool = poolfactory.make_pool(applier.ConcurrencyStyle(
        computeWorkerKind=applier.CW_SUBPROC, numComputeWorkers=2), None)
    pool.terminate()
    assert not set(asked) & set(ALL_POOL_CLASSES)


@pytest.fixture
def contract_backends(request) -> dict:
    """tests/conftest.py's BACKENDS, from pytest's own copy of that conftest: ``from conftest
    import`` finds tests/applier's instead when both directories are collected."""
    conftest = request.config.pluginmanager.get_plugin(str(Path(__file__).with_name("conftest.py")))
    return conftest.BACKENDS


@pytest.mark.parametrize("entry", [b for b in BACKENDS if b.dummy is not None],
                         ids=lambda b: b.name)
def test_dummy_fixture_exists_and_runs_the_shared_suite(entry: Backend, request,
                                                        contract_backends):
    request.getfixturevalue(entry.dummy)
    assert any(fixture == entry.dummy for fixture, _ in contract_backends.values())
