"""pytest fixtures dummy_slurm, dummy_sge, dummy_pbs (registered via the pytest11 entry point).

Each installs fake commands into a per-test temp dir, puts that dir first on
PATH (monkeypatch), yields the DummyQueue and, at teardown, kills every job
process group and hanging command that is still alive.
"""
from __future__ import annotations

import os
from typing import Iterator

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
