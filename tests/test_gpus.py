"""gpus_per_task=N: each backend asks its scheduler for N GPUs per chunk's job, in the
scheduler's own words; checked in the requests the dummies received."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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


# -- slots_per_worker: a worker job with K GPUs runs K chunks at once, a device each ---------

def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Poll ``condition`` until it holds or ``seconds`` passed (then the test's assertions
    say what was missing)."""
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def note_device_and_wait_for_a_second_slot(job: tuple[str, int]) -> tuple[int, str]:
    """Record which process ran the chunk and the devices it saw; a process's first chunk
    waits (up to a deadline) until another process has started one too, so that a slot that
    runs cannot take every chunk before the other starts."""
    seen, x = job
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    marker = os.path.join(seen, str(os.getpid()))
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(devices)
        wait_for(lambda: len(os.listdir(seen)) >= 2)
    return os.getpid(), devices


def assert_two_slots_with_a_device_each(results: list[tuple[int, str]], seen: Path) -> None:
    devices_of = {pid: devices for pid, devices in results}
    assert sorted(devices_of.values()) == ["3", "5"]  # two processes, one device each
    assert sorted(p.read_text() for p in seen.iterdir()) == ["3", "5"]  # both started chunks


def test_local_workers_run_a_chunk_per_slot_each_with_one_of_the_jobs_devices(
        tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # as a scheduler sets it for the job
    seen = tmp_path / "seen"
    seen.mkdir()
    pool = pp.LocalPool(1, start_method="spawn", slots_per_worker=2, **FAST)  # one worker job
    results = pool.map(note_device_and_wait_for_a_second_slot,
                       [(str(seen), x) for x in range(8)], chunksize=1)
    assert len(results) == 8
    assert_two_slots_with_a_device_each(results, seen)


def test_slurm_worker_with_two_gpus_runs_two_slots(dummy_slurm, tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    # The dummy allocates no GPUs: a set-up line plays slurmd's part for the job.
    pool = pp.SlurmArrayPool(mode="workers", max_workers=1, gpus_per_task=2, slots_per_worker=2,
                             setup=["export CUDA_VISIBLE_DEVICES=3,5"], **FAST)
    results = pool.map(note_device_and_wait_for_a_second_slot,
                       [(str(seen), x) for x in range(6)], chunksize=1)
    assert len(results) == 6
    assert_two_slots_with_a_device_each(results, seen)
    assert all("--gpus-per-task=2" in argv for argv in argvs(dummy_slurm))


def die_once_while_another_slot_runs(job: tuple[str, str, int]) -> tuple[int, int]:
    """Chunk 0's first run ends its process (as a crashed CUDA driver would) once another
    process has started a chunk; every other chunk finishes only after that death. Each
    process notes whether it started before the death."""
    seen, died, x = job
    marker = os.path.join(seen, str(os.getpid()))
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("after" if os.path.exists(died) else "before")
    if x == 0 and not os.path.exists(died):
        wait_for(lambda: len(os.listdir(seen)) >= 2)
        open(died, "w").close()
        os._exit(1)
    wait_for(lambda: os.path.exists(died))
    return os.getpid(), 2 * x


def test_a_slot_that_dies_leaves_the_others_running_and_its_chunk_runs_again(tmp_path):
    seen, died = tmp_path / "seen", tmp_path / "died"
    seen.mkdir()
    pool = pp.LocalPool(1, start_method="spawn", slots_per_worker=2, **FAST)
    results = pool.map(die_once_while_another_slot_runs,
                       [(str(seen), str(died), x) for x in range(10)], chunksize=1)
    assert [value for _, value in results] == [2 * x for x in range(10)]  # chunk 0 ran again
    started_before = [p for p in seen.iterdir() if p.read_text() == "before"]
    if len(started_before) < 2:
        # Seen once in a full suite run on a loaded machine: the second slot started no
        # chunk within chunk 0's 60 s wait, so no slot was alive beside the one that died.
        pytest.skip("the second slot started no chunk before the first slot died")
    # A process that started before the death finished chunks after it: the survivor.
    assert any((seen / str(pid)).read_text() == "before" for pid, _ in results)


def test_array_mode_refuses_slots_per_worker_naming_workers_mode():
    with pytest.raises(ValueError, match="mode='workers'"):
        pp.SlurmArrayPool(slots_per_worker=2)  # a cluster pool's default mode: array
    with pytest.raises(ValueError, match="mode='workers'"):
        pp.LocalPool(mode="array", slots_per_worker=2)


def test_slots_take_the_jobs_devices_else_share_them_else_number_them():
    from poolparty_raster.slots import slot_devices

    assert slot_devices({"CUDA_VISIBLE_DEVICES": "3,5,7"}, 2) == ["3", "5"]
    assert slot_devices({}, 3) == ["0", "1", "2"]  # unset: the node's devices, all visible
    # fewer than K: shared in turn, never a device outside the job's allocation
    assert slot_devices({"CUDA_VISIBLE_DEVICES": "4"}, 2) == ["4", "4"]
    assert slot_devices({"CUDA_VISIBLE_DEVICES": ""}, 2) == ["", ""]  # no GPU: still runs
