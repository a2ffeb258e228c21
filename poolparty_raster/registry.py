"""Every scheduler backend, declared once: what the modules that must know every backend read.

A backend has two faces at two heights: its scheduler (schedulers/<name>.py: commands and
output formats, below the engine) and the user's pool classes (pools/<name>.py, above
pools/base.py). What the rest of the package needs to know about all of them is here, as strings,
so that its readers import neither face and no import runs back up a layer:

- the package's names (``poolparty_raster.SlurmPool``, ...);
- the applier's kinds (``CW_SLURM``, ...) and the pool class each builds, imported from the
  backend's pool module by name;
- the worker's node variables: node.py on a node reads them without loading a pool or a
  scheduler, so this module imports nothing of the package;
- the tests: the consistency checks (tests/test_registry.py) and the shared contract suite,
  which runs every backend that names a dummy (tests/conftest.py).

Adding a backend: its scheduler module, its pool module (re-exported by pools/__init__.py),
one entry in BACKENDS, its dummy in dummy_queues, its tests.
"""
from __future__ import annotations

from typing import NamedTuple


class Backend(NamedTuple):
    """One backend, as strings: reading it imports nothing of the package. (A NamedTuple, not
    a dataclass: dataclasses imports inspect, milliseconds of every worker's start.)

    name: names its two modules, schedulers/<name>.py and pools/<name>.py.
    pool_class: the user's usual pool, in pools/<name>.py; the one the applier kind builds.
    scheduler_class: its Scheduler, in schedulers/<name>.py.
    applier_kind: the applier's computeWorkerKind for it, CW_<...> as RIOS names its kinds.
    other_pool_classes: more pools of pools/<name>.py (SlurmPool beside SlurmArrayPool).
    node_variable_prefixes, node_variables: what its nodes set to describe the node or the
    allocation (SLURM_JOB_ID, SGE's JOB_ID): the driver's values never travel to a worker.
    dummy: the pytest fixture (dummy_queues.pytest_plugin) that stands in for the scheduler
    in tests, None when the backend needs none.
    """

    name: str
    pool_class: str
    scheduler_class: str
    applier_kind: str
    other_pool_classes: tuple[str, ...] = ()
    node_variable_prefixes: tuple[str, ...] = ()
    node_variables: tuple[str, ...] = ()
    dummy: str | None = None

    @property
    def pool_module(self) -> str:
        return f"poolparty_raster.pools.{self.name}"

    @property
    def scheduler_module(self) -> str:
        return f"poolparty_raster.schedulers.{self.name}"

    @property
    def pool_classes(self) -> tuple[str, ...]:
        return (self.pool_class, *self.other_pool_classes)


BACKENDS: tuple[Backend, ...] = (
    Backend(name="local", pool_class="LocalPool", scheduler_class="LocalScheduler",
            applier_kind="CW_SUBPROC"),
    Backend(name="slurm", pool_class="SlurmArrayPool", other_pool_classes=("SlurmPool",),
            scheduler_class="SlurmScheduler", applier_kind="CW_SLURM",
            node_variable_prefixes=("SLURM_", "SLURMD_"), dummy="dummy_slurm"),
    Backend(name="sge", pool_class="SgePool", scheduler_class="SgeScheduler",
            applier_kind="CW_SGE", node_variable_prefixes=("SGE_",),
            node_variables=("JOB_ID", "JOB_NAME", "JOB_SCRIPT", "NSLOTS", "NHOSTS", "QUEUE",
                            "PE_HOSTFILE", "ENVIRONMENT", "REQUEST", "RESTARTED"),
            dummy="dummy_sge"),
    Backend(name="pbs", pool_class="PbsPool", scheduler_class="PbsScheduler",
            applier_kind="CW_PBS", node_variable_prefixes=("PBS_",), node_variables=("NCPUS",),
            dummy="dummy_pbs"),
    # LSF_ENVDIR and kin point a node's tools at its cluster; LS_* are set per job.
    Backend(name="lsf", pool_class="LsfPool", scheduler_class="LsfScheduler",
            applier_kind="CW_LSF", node_variable_prefixes=("LSB_", "LSF_"),
            node_variables=("LS_SUBCWD", "LS_EXECCWD", "LS_JOBPID"), dummy="dummy_lsf"),
    # _CONDOR_* (slot, scratch directory, job ad) and BATCH_SYSTEM are set per job.
    Backend(name="htcondor", pool_class="HTCondorPool", scheduler_class="HTCondorScheduler",
            applier_kind="CW_HTCONDOR", node_variable_prefixes=("_CONDOR_", "_CHIRP_"),
            node_variables=("BATCH_SYSTEM",), dummy="dummy_htcondor"),
    Backend(name="ecs", pool_class="EcsPool", scheduler_class="EcsScheduler",
            applier_kind="CW_ECS", node_variable_prefixes=("ECS_", "AWS_CONTAINER_"),
            dummy="dummy_ecs"),
    # Batch runs its jobs as ECS tasks: their containers get ECS's variables too.
    Backend(name="awsbatch", pool_class="AwsBatchPool", scheduler_class="AwsBatchScheduler",
            applier_kind="CW_AWSBATCH",
            node_variable_prefixes=("AWS_BATCH_", "ECS_", "AWS_CONTAINER_"), dummy="dummy_batch"),
)
