"""pytest fixtures dummy_slurm, dummy_sge, dummy_pbs, dummy_lsf, dummy_htcondor, dummy_ecs and
dummy_batch (registered
via the pytest11 entry point).

The command-line ones install fake commands into a per-test temp dir, put that dir first on
PATH (monkeypatch), yield the DummyQueue and, at teardown, kill every job process group and
hanging command that is still alive. The AWS ones yield a dummy client (dummy_queues.aws) and
make it the one ``aws.pool_options`` hands to pools.

Each backend in poolparty_raster's registry names its fixture here (``Backend.dummy``); the
shared contract suite (tests/conftest.py) runs that backend's pools on it.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import pytest

from ._queue import DummyQueue, install


def _fixture(scheduler: str, tmp_path_factory: pytest.TempPathFactory,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[DummyQueue]:
    base = tmp_path_factory.mktemp(f"dummy_{scheduler}")
    queue = install(base / "bin", scheduler=scheduler)
    monkeypatch.setenv("PATH", f"{queue.directory}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        yield queue
    finally:
        queue.kill_all()


@pytest.fixture
def dummy_slurm(tmp_path_factory: pytest.TempPathFactory,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[DummyQueue]:
    """A fake SLURM (sbatch squeue scancel scontrol sinfo) first on PATH."""
    yield from _fixture("slurm", tmp_path_factory, monkeypatch)


@pytest.fixture
def dummy_sge(tmp_path_factory: pytest.TempPathFactory,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[DummyQueue]:
    """A fake Grid Engine (qsub qstat qdel) first on PATH."""
    yield from _fixture("sge", tmp_path_factory, monkeypatch)


@pytest.fixture
def dummy_pbs(tmp_path_factory: pytest.TempPathFactory,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[DummyQueue]:
    """A fake PBS Pro (qsub qstat qdel) first on PATH."""
    yield from _fixture("pbs", tmp_path_factory, monkeypatch)


@pytest.fixture
def dummy_lsf(tmp_path_factory: pytest.TempPathFactory,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[DummyQueue]:
    """A fake IBM Spectrum LSF (bsub bjobs bkill badmin) first on PATH."""
    yield from _fixture("lsf", tmp_path_factory, monkeypatch)


@pytest.fixture
def dummy_htcondor(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[DummyQueue]:
    """A fake HTCondor (condor_submit condor_q condor_history condor_rm) first on PATH."""
    yield from _fixture("htcondor", tmp_path_factory, monkeypatch)


def _aws_fixture(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from . import aws  # botocore is needed only by the AWS dummies

    dummy = (aws.DummyEcs if kind == "ecs" else aws.DummyBatch)(
        str(tmp_path_factory.mktemp(f"dummy_{kind}")))
    aws.ACTIVE[kind] = dummy
    try:
        yield dummy
    finally:
        aws.ACTIVE.pop(kind, None)
        dummy.close()


@pytest.fixture
def dummy_ecs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A dummy ECS client (dummy_queues.aws.DummyEcs); EcsPool(**aws.pool_options("ecs")) uses it."""
    pytest.importorskip("botocore")
    yield from _aws_fixture("ecs", tmp_path_factory)


@pytest.fixture
def dummy_batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A dummy AWS Batch client (dummy_queues.aws.DummyBatch), for AwsBatchPool."""
    pytest.importorskip("botocore")
    yield from _aws_fixture("batch", tmp_path_factory)
