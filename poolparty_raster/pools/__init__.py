"""The pools users construct: one small module per backend, each holding that backend's pool
classes, which build its scheduler (registry.py names the module and classes of each).

Every pool takes the common options documented on :class:`poolparty_raster.pools.base.Pool`; each
class lists the backend's own. They are re-exported here by name, so that ``from
poolparty_raster.pools import SlurmPool`` finds them and importing this package (as every fork
server does) loads them all; tests/test_registry.py checks this list against the registry.
"""
from poolparty_raster.pools.awsbatch import AwsBatchPool
from poolparty_raster.pools.ecs import EcsPool
from poolparty_raster.pools.htcondor import HTCondorPool
from poolparty_raster.pools.local import LocalPool
from poolparty_raster.pools.lsf import LsfPool
from poolparty_raster.pools.pbs import PbsPool
from poolparty_raster.pools.sge import SgePool
from poolparty_raster.pools.slurm import SlurmArrayPool, SlurmPool

__all__ = ["AwsBatchPool", "EcsPool", "HTCondorPool", "LocalPool", "LsfPool", "PbsPool",
           "SgePool", "SlurmArrayPool", "SlurmPool"]
