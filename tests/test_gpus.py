"""gpus_per_task=N: each backend asks its scheduler for N GPUs per chunk's job, in the
scheduler's own words; checked in the requests the dummies received."""
from __future__ import annotations

import pytest

import poolparty_raster as pp

FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}


def double(x: int) -> int:
    return 2 * x


def argvs(queue) -> list[list[str]]:
    return [s["argv"] for s in queue.submissions]


def test_slurm_asks_for_gpus_per_task(dummy_slurm):
    assert pp.SlurmArrayPool(gpus_per_task=2, **FAST).map(double, range(3)) == [0, 2, 4]
    assert all("--gpus-per-task=2" in argv for argv in argvs(dummy_slurm))


def test_sge_asks_for_the_sites_gpu_resource(dummy_sge):
    pool = pp.SgePool(gpus_per_task=1, gpu_resource="gpu_count", **FAST)
    assert pool.map(double, range(3)) == [0, 2, 4]
    for argv in argvs(dummy_sge):
        assert argv[argv.index("gpu_count=1") - 1] == "-l"


def test_pbs_adds_ngpus_to_the_select(dummy_pbs):
    pool = pp.PbsPool(gpus_per_task=2, resources=["select=1:ncpus=4"], **FAST)
    assert pool.map(double, range(3)) == [0, 2, 4]
    assert all("select=1:ncpus=4:ngpus=2" in argv for argv in argvs(dummy_pbs))


def test_pbs_makes_a_select_for_the_gpus_when_none_is_given():
    assert pp.PbsPool(gpus_per_task=1)._scheduler.resource_args == ["-l", "select=1:ngpus=1"]


def test_lsf_asks_for_gpus_with_its_gpu_option(dummy_lsf):
    assert pp.LsfPool(gpus_per_task=4, **FAST).map(double, range(3)) == [0, 2, 4]
    for argv in argvs(dummy_lsf):
        assert argv[argv.index("-gpu") + 1] == "num=4"


def test_htcondor_asks_for_gpus_with_request_gpus(dummy_htcondor):
    assert pp.HTCondorPool(gpus_per_task=2, **FAST).map(double, range(3)) == [0, 2, 4]
    assert [s["commands"]["request_gpus"] for s in dummy_htcondor.submissions] == ["2"]


def test_batch_asks_for_gpus_in_the_resource_requirements(dummy_batch):
    from dummy_queues import aws

    pool = pp.AwsBatchPool(gpus_per_task=1, **aws.pool_options("batch"), **FAST)
    assert pool.map(double, range(3)) == [0, 2, 4]
    for params in dummy_batch.calls_to("SubmitJob"):
        assert {"type": "GPU", "value": "1"} in params["containerOverrides"]["resourceRequirements"]


def test_ecs_asks_for_gpus_in_the_container_overrides(dummy_ecs):
    from dummy_queues import aws

    dummy_ecs.register_task_definition(  # GPUs are EC2's: a definition for it
        family="poolparty-gpu", requiresCompatibilities=["EC2"], networkMode="awsvpc",
        memory="1024", containerDefinitions=[{"name": "poolparty", "image": "python:3"}])
    options = {**aws.pool_options("ecs"), "launch_type": "EC2", "task_definition": "poolparty-gpu"}
    pool = pp.EcsPool(gpus_per_task=2, **options, **FAST)
    assert pool.map(double, range(2), chunksize=1) == [0, 2]
    for params in dummy_ecs.calls_to("RunTask"):
        (override,) = params["overrides"]["containerOverrides"]
        assert override["resourceRequirements"] == [{"type": "GPU", "value": "2"}]


def test_fargate_has_no_gpus():
    with pytest.raises(ValueError, match="Fargate offers no GPUs"):
        pp.EcsPool(task_definition="td", subnets=["s"], gpus_per_task=1, ecs_client=object())
