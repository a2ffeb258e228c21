"""EcsPool and AwsBatchPool: request shapes checked against botocore's service models (Stubber),
the backends' answers to refusals, lost answers and odd states, and faults injected into the
dummy ECS / Batch end to end (the shared contract suite runs on both too)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster.errors import SchedulerError, SchedulerOutputError, SubmissionRefused
from poolparty_raster.schedulers.base import SubmitSpec, TaskState
from poolparty_raster.workdir import WorkDir

botocore = pytest.importorskip("botocore")
from botocore.session import get_session  # noqa: E402
from botocore.stub import ANY, Stubber  # noqa: E402

from poolparty_raster.schedulers import awsbatch, ecs, ecsstatus  # noqa: E402
from poolparty_raster.schedulers.awscommon import AwsRequestError, container_command  # noqa: E402
from workdirlog import log_events

# The tasks below travel by value: a worker then need not import this module (pytest, botocore).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TASK = "arn:aws:ecs:us-east-1:123456789012:task/c/0123456789abcdef"
DEFINITION = "arn:aws:ecs:us-east-1:123456789012:task-definition/poolparty-ppabc:1"
CHUNK_ENV = ["--env", "POOLPARTY_RASTER_CHUNK"]


def square(x):
    return x * x


def real_client(service):
    """A real botocore client (never sends: the Stubber answers, after validating the call)."""
    return get_session().create_client(service, region_name="us-east-1", aws_access_key_id="x",
                                       aws_secret_access_key="y")


def spec(tmp_path, throttle=None):
    return SubmitSpec(work_dir=str(tmp_path / "work"), script_path=str(tmp_path / "work" / "script.py"),
                      python_path="/usr/bin/python3", job_name="ppabc", scheduler_log="",
                      throttle=throttle)


def stopped(arn, code=None, stop_code="EssentialContainerExited", reason="", why="Essential container in task exited"):
    container = {"name": "poolparty", **({"exitCode": code} if code is not None else {}),
                 **({"reason": reason} if reason else {})}
    return {"taskArn": arn, "lastStatus": "STOPPED", "stopCode": stop_code, "stoppedReason": why,
            "containers": [container]}


def ecs_scheduler(client, **options):
    defaults = {"task_definition": "td:3", "cluster": "c", "subnets": ["subnet-1"], "ecs_client": client}
    scheduler = ecs.EcsScheduler(**{**defaults, **options})
    scheduler.backoff = 0.0
    return scheduler


# -- ECS: request shapes ------------------------------------------------------------------------
def test_ecs_register_run_describe_stop_deregister_validate_against_the_model(tmp_path):
    client = real_client("ecs")
    options = pp.EcsPool.extra_params_fargate(
        container_image="123.dkr.ecr.us-east-1.amazonaws.com/img:1", execution_role_arn="arn:exec",
        task_role_arn="arn:task", subnet="subnet-1", security_groups=["sg-1"], cpu="1 vCPU",
        memory="2GB", cluster="c", efs_file_system_id="fs-1", efs_container_path=str(tmp_path),
        log_group="/pp", tags={"project": "x"})
    scheduler = ecs_scheduler(client, **{**options, "task_definition": None, "region": "us-east-1",
                                         "container_python": "/opt/py/bin/python"})
    s = spec(tmp_path)
    tags = [{"key": "poolparty_raster:map", "value": "ppabc"}, {"key": "project", "value": "x"}]
    with Stubber(client) as stub:
        stub.add_response("register_task_definition", {"taskDefinition": {"taskDefinitionArn": DEFINITION}}, {
            "family": "poolparty-ppabc", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc",
            "cpu": "1024", "memory": "2048", "executionRoleArn": "arn:exec", "taskRoleArn": "arn:task",
            "tags": tags, "containerDefinitions": [{
                "name": "poolparty", "image": "123.dkr.ecr.us-east-1.amazonaws.com/img:1", "essential": True,
                "mountPoints": [{"sourceVolume": "work", "containerPath": str(tmp_path), "readOnly": False}],
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": "/pp", "awslogs-stream-prefix": "ppabc", "awslogs-region": "us-east-1"}}}],
            "volumes": [{"name": "work", "efsVolumeConfiguration": {
                "fileSystemId": "fs-1", "rootDirectory": "/", "transitEncryption": "ENABLED"}}]})
        stub.add_response("run_task", {"tasks": [{"taskArn": TASK}], "failures": []}, {
            "cluster": "c", "taskDefinition": DEFINITION, "count": 1, "launchType": "FARGATE",
            "startedBy": "ppabc", "clientToken": ANY, "tags": tags,
            "networkConfiguration": {"awsvpcConfiguration": {
                "subnets": ["subnet-1"], "securityGroups": ["sg-1"], "assignPublicIp": "DISABLED"}},
            "overrides": {"containerOverrides": [{
                "name": "poolparty", "environment": [{"name": "POOLPARTY_RASTER_CHUNK", "value": "7"}],
                "command": container_command(s, "/opt/py/bin/python", None, CHUNK_ENV)}]}})
        (record,) = scheduler.submit(s, [7])
        assert record == {"job_id": "0123456789abcdef", "chunks": [7], "task_arn": TASK,
                          "registered_definition": DEFINITION}
        stub.add_response("describe_tasks", {"tasks": [stopped(TASK, 137, reason="OutOfMemoryError: Container killed")],
                                             "failures": []}, {"cluster": "c", "tasks": [TASK]})
        status = scheduler.poll(s, [record])[("0123456789abcdef", 7)]
        assert status.state is TaskState.FINISHED and status.reason.startswith("out of memory")
        other = {"job_id": "b", "chunks": [8], "task_arn": TASK + "b"}
        stub.add_response("stop_task", {"task": {}}, {"cluster": "c", "task": TASK + "b", "reason": ANY})
        stub.add_response("deregister_task_definition", {"taskDefinition": {}}, {"taskDefinition": DEFINITION})
        scheduler.cancel(s, [record, other])  # the stopped one is left alone; the definition goes
        stub.assert_no_pending_responses()


def test_ecs_private_cluster_uses_bridge_networking_and_task_memory(tmp_path):
    client = real_client("ecs")
    options = pp.EcsPool.extra_params_private_cluster(cluster="mine", container_image="img:1")
    scheduler = ecs_scheduler(client, **{**options, "subnets": []})
    params = scheduler.task_definition_params(spec(tmp_path))
    assert params["networkMode"] == "bridge" and params["memory"] == "1024" and "cpu" not in params
    with Stubber(client) as stub:
        stub.add_response("register_task_definition", {"taskDefinition": {"taskDefinitionArn": DEFINITION}}, params)
        stub.add_response("run_task", {"tasks": [{"taskArn": TASK}]}, {
            "cluster": "mine", "taskDefinition": DEFINITION, "count": 1, "launchType": "EC2",
            "startedBy": "ppabc", "clientToken": ANY, "tags": ANY, "overrides": ANY})  # no awsvpc
        assert [r["task_arn"] for r in scheduler.submit(spec(tmp_path), [0])] == [TASK]


def test_ecs_refuses_before_sending_what_ecs_would_refuse(tmp_path):
    def refused(match, **options):
        with pytest.raises(ValueError, match=match):
            ecs.EcsScheduler(**{"container_image": "img", "subnets": ["s"], **options})
    refused("needs subnets", subnets=[])
    refused("not both", task_definition="td")
    refused("efs_container_path", efs_file_system_id="fs-1")
    refused("does not offer cpu=256 with memory=4096", cpu=256, memory=4096)
    refused("assign_public_ip works on Fargate only", launch_type="EC2", assign_public_ip=True)
    refused("need subnets", launch_type="EC2", subnets=[], security_groups=["sg"])
    refused("execution_role_arn", container_image="1.dkr.ecr.eu-west-1.amazonaws.com/i")
    refused("must be a role ARN", execution_role_arn="myRole")
    refused("AWS tags", tags={"bad": "new\nline"})
    refused("launch_type", launch_type="EXTERNAL")
    with pytest.raises(ValueError, match="job_name"):
        pp.EcsPool(task_definition="td", subnets=["s"], job_name="my map", ecs_client=object())
    with pytest.raises(ValueError, match="job_name"):
        pp.AwsBatchPool(job_queue="q", job_definition="d", job_name="x" * 30, batch_client=object())
    scheduler = ecs.EcsScheduler(container_image="img", subnets=["s"], efs_file_system_id="fs-1",
                                 efs_container_path="/mnt/efs")
    with pytest.raises(SchedulerError, match="not below efs_container_path"):
        scheduler.task_definition_params(spec(tmp_path))  # the work_dir is not on the EFS mount


# -- ECS: refusals, lost answers, polls, cancels ------------------------------------------------
def test_ecs_yields_each_started_task_and_hands_refusals_to_the_engine(tmp_path):
    client = real_client("ecs")
    scheduler = ecs_scheduler(client)
    s = spec(tmp_path)
    with Stubber(client) as stub:
        stub.add_response("run_task", {"tasks": [{"taskArn": TASK + "0"}], "failures": []})
        stub.add_response("run_task", {"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY"}]})
        submitted = scheduler.submit(s, [0, 1, 2])
        assert next(submitted)["task_arn"] == TASK + "0"  # yielded before the next run_task
        with pytest.raises(SubmissionRefused, match="RESOURCE:MEMORY") as info:
            next(submitted)
        assert info.value.give_up_after == ecs.PLACEMENT_GIVE_UP_AFTER
        stub.add_client_error("run_task", "ThrottlingException", "Rate exceeded")
        with pytest.raises(SubmissionRefused, match="throttled") as info:
            list(scheduler.submit(s, [1]))
        assert info.value.give_up_after is None  # passes by itself: waited out for ever
        stub.add_response("run_task", {"tasks": [], "failures": [
            {"reason": "You've reached the limit on the number of tasks you can run concurrently"}]})
        with pytest.raises(SubmissionRefused) as info:
            list(scheduler.submit(s, [1]))
        assert info.value.give_up_after is None  # the account's quota: other work frees it
        stub.add_client_error("run_task", "InvalidParameterException", "No Container Instances were found")
        with pytest.raises(AwsRequestError, match="InvalidParameterException"):
            list(scheduler.submit(s, [1]))
        stub.assert_no_pending_responses()


def test_ecs_permanent_refusal_deregisters_a_definition_nothing_used(tmp_path):
    client = real_client("ecs")
    scheduler = ecs_scheduler(client, task_definition=None, container_image="img")
    with Stubber(client) as stub:
        stub.add_response("register_task_definition", {"taskDefinition": {"taskDefinitionArn": DEFINITION}})
        stub.add_client_error("run_task", "AccessDeniedException", "not authorized to perform ecs:RunTask")
        stub.add_response("deregister_task_definition", {"taskDefinition": {}}, {"taskDefinition": DEFINITION})
        with pytest.raises(AwsRequestError, match="AccessDenied"):
            list(scheduler.submit(spec(tmp_path), [0]))
        stub.assert_no_pending_responses()


def test_ecs_lost_answers_are_asked_again_with_the_same_client_token(dummy_ecs, tmp_path):
    from dummy_queues.aws import pool_options

    options = {k: v for k, v in pool_options("ecs").items()}
    scheduler = ecs_scheduler(options.pop("ecs_client"), **options)
    s = spec(tmp_path)
    dummy_ecs.inject_lost_reply("RunTask", 1)
    (record,) = scheduler.submit(s, [0])
    dummy_ecs.inject_lost_reply("RunTask", scheduler.retries + 1)
    with pytest.raises(SubmissionRefused, match="did not answer"):
        list(scheduler.submit(s, [1]))
    (later,) = scheduler.submit(s, [1])  # the engine's next try: the same request, not a new one
    tokens = [p["clientToken"] for p in dummy_ecs.calls_to("RunTask")]
    assert len(dummy_ecs.tasks) == 2 and tokens[0] == tokens[1] and len(set(tokens[2:])) == 1
    assert {record["task_arn"], later["task_arn"]} == set(dummy_ecs.tasks)


def dummy_ecs_scheduler(**options):
    from dummy_queues.aws import pool_options

    options = {**pool_options("ecs"), **options}
    return ecs_scheduler(options.pop("ecs_client"), **options)


def test_ecs_resumed_driver_repeats_a_lost_run_task_and_gets_its_task(dummy_ecs, tmp_path):
    s = spec(tmp_path)
    first = dummy_ecs_scheduler()
    (record,) = first.submit(s, [0])
    first.poll(s, [record])
    for chunk in (1, 0):  # a first attempt, and chunk 0's second: both answers lost
        dummy_ecs.inject_lost_reply("RunTask", first.retries + 1)
        with pytest.raises(SubmissionRefused, match="did not answer"):
            list(first.submit(s, [chunk]))
    lost = set(dummy_ecs.tasks) - {record["task_arn"]}
    resumed = dummy_ecs_scheduler()  # the driver was killed: a new one knows only jobs.jsonl
    records = json.loads(json.dumps([record]))
    (one,) = resumed.submit(s, [1])  # as the engine does: record-less chunks at once...
    resumed.poll(s, records)         # ...the others after a poll showed them dead
    (zero,) = resumed.submit(s, [0])
    assert {one["task_arn"], zero["task_arn"]} == lost and len(dummy_ecs.tasks) == 3


def test_ecs_rerun_after_a_lost_run_task_takes_that_task_despite_a_new_revision(dummy_ecs, tmp_path):
    s = spec(tmp_path)
    scheduler = dummy_ecs_scheduler(task_definition=None, container_image="python:3")
    dummy_ecs.inject_lost_reply("RunTask", scheduler.retries + 1)
    with pytest.raises(SubmissionRefused):
        list(scheduler.submit(s, [0]))
    scheduler.cancel(s, [])  # the map failed: its task definition is deregistered
    (record,) = scheduler.submit(s, [0])  # run again: a new revision, the same chunk and attempt
    ours = [d for d in dummy_ecs.definitions.values() if d["family"] == "poolparty-ppabc"]
    assert [d["revision"] for d in ours] == [1, 2] and list(dummy_ecs.tasks) == [record["task_arn"]]


def test_ecs_same_map_in_a_work_dir_made_again_starts_new_tasks(dummy_ecs, tmp_path):
    s = spec(tmp_path)  # a map's name comes from its work_dir's path and its tasks
    script = Path(s.script_path)
    script.parent.mkdir()
    script.write_text("")
    (first,) = dummy_ecs_scheduler().submit(s, [0])
    made = script.stat().st_mtime_ns
    script.unlink()  # the map ended cleanly, its work_dir went; the same map made it again later
    script.write_text("")
    os.utime(script, ns=(made + 10**9, made + 10**9))
    (again,) = dummy_ecs_scheduler().submit(s, [0])
    assert again["task_arn"] != first["task_arn"] and len(dummy_ecs.tasks) == 2


def test_ecs_cancel_stops_every_task_whatever_one_stop_raises(dummy_ecs, tmp_path):
    dummy_ecs.slots = 0  # the tasks stay pending
    s = spec(tmp_path)
    scheduler = dummy_ecs_scheduler(task_definition=None, container_image="python:3")
    records = list(scheduler.submit(s, [0, 1, 2]))
    dummy_ecs.inject_transport_error("StopTask", "HTTPClientError", times=scheduler.retries + 1)
    with pytest.raises(SchedulerError, match=rf"1 thing\(s\).*{records[0]['task_arn']}.*Connection reset"):
        scheduler.cancel(s, records)
    stopped = {arn for arn, t in dummy_ecs.tasks.items() if t.get("stopCode") == "UserInitiated"}
    assert stopped == {r["task_arn"] for r in records[1:]}
    assert all(d["status"] == "INACTIVE" for d in dummy_ecs.definitions.values() if d["family"] == "poolparty-ppabc")


def test_ecs_records_alone_let_another_driver_poll_and_stop_the_tasks(dummy_ecs, tmp_path):
    from dummy_queues.aws import pool_options

    options = pool_options("ecs")
    s = spec(tmp_path)
    os.makedirs(s.work_dir)
    with open(s.script_path, "w") as script:  # tasks that run until stopped, however slow
        script.write("import time\ntime.sleep(120)\n")
    records = json.loads(json.dumps(list(ecs.EcsScheduler(**options).submit(s, [0, 1]))))
    resumed = ecs.EcsScheduler(**options)  # a new driver: it knows only jobs.jsonl
    assert set(resumed.poll(s, records)) == {(r["job_id"], r["chunks"][0]) for r in records}
    resumed.cancel(s, records)
    assert {t["stopCode"] for t in dummy_ecs.tasks.values()} == {"UserInitiated"}


def test_ecs_polls_in_hundreds_and_reads_every_state(tmp_path):
    client = real_client("ecs")
    scheduler = ecs_scheduler(client)
    s = spec(tmp_path)
    records = [{"job_id": str(i), "chunks": [i], "task_arn": f"{TASK}{i}"} for i in range(150)]
    tasks = [{"taskArn": r["task_arn"], "lastStatus": "RUNNING"} for r in records]
    tasks[3] = {"taskArn": records[3]["task_arn"], "lastStatus": "DELETED"}
    tasks[4] = stopped(records[4]["task_arn"], stop_code="TaskFailedToStart",
                       why="CannotPullContainerError: pull image manifest has been retried 5 time(s)")
    tasks[5] = stopped(records[5]["task_arn"], stop_code="TaskFailedToStart",
                       why="CannotPullContainerError: toomanyrequests: You have reached your pull rate limit")
    tasks[6] = stopped(records[6]["task_arn"], stop_code="SpotInterruption", why="Your Spot Task was interrupted.")
    with Stubber(client) as stub:
        stub.add_client_error("describe_tasks", "ThrottlingException", "Rate exceeded")
        stub.add_response("describe_tasks", {"tasks": tasks[:100]}, {"cluster": "c", "tasks": [t["taskArn"] for t in tasks[:100]]})
        stub.add_response("describe_tasks", {"tasks": tasks[100:]}, {"cluster": "c", "tasks": [t["taskArn"] for t in tasks[100:]]})
        result = scheduler.poll(s, records)
        assert len(result) == 150 and result[("7", 7)].state is TaskState.RUNNING
        assert result[("3", 3)].state is TaskState.FINISHED
        assert result[("4", 4)].state is TaskState.FATAL and "CannotPullContainerError" in result[("4", 4)].reason
        assert result[("5", 5)].state is TaskState.FINISHED  # a registry's rate limit passes
        assert result[("6", 6)].reason.startswith("spot interruption")
        stub.add_client_error("describe_tasks", "AccessDeniedException", "not authorized")
        with pytest.raises(AwsRequestError, match="AccessDenied"):  # once: not retried
            scheduler.poll(s, [records[0]])
        stub.add_response("describe_tasks", {"tasks": [{"taskArn": records[0]["task_arn"], "lastStatus": "NEW"}]})
        with pytest.raises(SchedulerOutputError, match="unknown lastStatus 'NEW'"):
            scheduler.poll(s, [records[0]])
        stub.assert_no_pending_responses()


def test_ecs_cancel_stops_each_task_and_always_deregisters(tmp_path):
    client = real_client("ecs")
    scheduler = ecs_scheduler(client)
    records = [{"job_id": str(i), "chunks": [i], "task_arn": f"{TASK}{i}", "registered_definition": DEFINITION}
               for i in range(3)]
    with Stubber(client) as stub:
        stub.add_client_error("stop_task", "AccessDeniedException", "not authorized",
                              expected_params={"cluster": "c", "task": f"{TASK}0", "reason": ANY})
        stub.add_client_error("stop_task", "InvalidParameterException", "The referenced task was not found.")
        stub.add_response("stop_task", {"task": {}}, {"cluster": "c", "task": f"{TASK}2", "reason": ANY})
        stub.add_response("deregister_task_definition", {"taskDefinition": {}}, {"taskDefinition": DEFINITION})
        with pytest.raises(SchedulerError, match=rf"1 thing\(s\).*{TASK}0.*AccessDenied"):
            scheduler.cancel(spec(tmp_path), records)
        stub.assert_no_pending_responses()


def test_stop_reasons_name_oom_only_with_its_reason_and_spot_interruptions():
    describe = ecsstatus.describe_stopped
    assert describe(stopped(TASK, 137, reason="OutOfMemoryError: Container killed due to memory usage")
                    ).startswith("out of memory (container killed, exit 137)")
    assert "out of memory" not in describe(stopped(TASK, 137, "UserInitiated", why="poolparty_raster: cancelled"))
    assert describe(stopped(TASK, None, "SpotInterruption")).startswith("spot interruption")
    assert describe(stopped(TASK, 137, why="Host EC2 (instance i-1) terminated.")).startswith("instance lost")
    assert ecsstatus.classify_task(stopped(TASK, 0)).succeeded and not ecsstatus.classify_task(stopped(TASK, 1)).succeeded
    classify = awsbatch.classify_job
    oom = {"jobId": "j", "status": "FAILED", "container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed"}}
    assert classify(oom).reason.startswith("out of memory")
    killed = {"jobId": "j", "status": "FAILED", "statusReason": awsbatch.CANCEL_REASON, "container": {"exitCode": 137}}
    assert "out of memory" not in classify(killed).reason
    assert classify({"jobId": "j", "status": "SUCCEEDED"}).succeeded and not classify(killed).succeeded
    lost = {"jobId": "j", "status": "FAILED", "statusReason": "Host EC2 (instance i-1) terminated."}
    assert classify(lost).reason.startswith("instance lost")
    assert classify({"jobId": "j", "status": "RUNNABLE", "statusReason": "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
                     }).state is TaskState.FATAL
    assert classify({"jobId": "j", "status": "FAILED", "statusReason": "Task failed to start", "container": {
        "reason": "ResourceInitializationError: failed to invoke EFS utils commands"}}).state is TaskState.FATAL
    with pytest.raises(SchedulerOutputError, match="unknown status 'ARCHIVED'"):
        classify({"jobId": "j", "status": "ARCHIVED"})


# -- Batch ----------------------------------------------------------------------------------------
def batch_scheduler(client, **options):
    scheduler = awsbatch.AwsBatchScheduler(**{"job_queue": "q", "job_definition": "jd:2",
                                              "batch_client": client, **options})
    scheduler.backoff = 0.0
    return scheduler


def test_batch_requests_validate_against_the_service_model(tmp_path):
    client = real_client("batch")
    scheduler = batch_scheduler(client, vcpus=2, memory=4096, tags={"project": "x"})
    s = spec(tmp_path)
    common = {"jobQueue": "q", "jobDefinition": "jd:2", "retryStrategy": {"attempts": 1}, "jobName": ANY,
              "propagateTags": True, "tags": {"poolparty_raster:map": "ppabc", "project": "x"}}
    requirements = [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "4096"}]
    with Stubber(client) as stub:
        stub.add_response("submit_job", {"jobName": "a", "jobId": "arr"}, {
            **common, "arrayProperties": {"size": 3}, "containerOverrides": {
                "resourceRequirements": requirements, "command": container_command(
                    s, None, None, ["--env", "AWS_BATCH_JOB_ARRAY_INDEX", "--offset", "3"])}})
        stub.add_response("submit_job", {"jobName": "b", "jobId": "one"}, {
            **common, "containerOverrides": {"resourceRequirements": requirements,
                                             "command": container_command(s, None, None, ["9"])}})
        records = list(scheduler.submit(s, [3, 4, 5, 9]))  # a lone chunk: a plain job (arrays need 2)
        assert [(r["job_id"], r["chunks"]) for r in records] == [("arr", [3, 4, 5]), ("one", [9])]
        assert all(re.fullmatch(r"ppabc-\d+-[0-9a-f]{12}", r["job_name"]) for r in records)

        def job(job_id, status, **more):
            return {"jobName": "n", "jobId": job_id, "jobQueue": "q", "status": status,
                    "startedAt": 1, "jobDefinition": "jd:2", **more}
        stub.add_response("describe_jobs", {"jobs": [
            job("arr:0", "RUNNABLE"), job("arr:1", "RUNNING"),
            job("arr:2", "FAILED", statusReason="Host EC2 (instance i-1) terminated.",
                attempts=[{"container": {"exitCode": 137, "reason": "OutOfMemoryError"}}]),
            job("one", "SUCCEEDED", container={"exitCode": 0}), job("arr", "PENDING")]},
            {"jobs": ["arr:0", "arr:1", "arr:2", "one", "arr"]})
        result = scheduler.poll(s, records)
        assert result[("arr", 3)].state is TaskState.PENDING
        assert result[("arr", 4)].state is TaskState.RUNNING
        assert "out of memory" in result[("arr", 5)].reason and "exit code 137" in result[("arr", 5)].reason
        assert result[("one", 9)].state is TaskState.FINISHED
        stub.add_response("terminate_job", {}, {"jobId": "arr:1", "reason": ANY})
        scheduler.cancel(s, records, [4])
        stub.add_client_error("terminate_job", "ServerException", "boom", http_status_code=500)
        stub.add_client_error("terminate_job", "AccessDeniedException", "no", expected_params={"jobId": "arr", "reason": ANY})
        with pytest.raises(SchedulerError, match="1 job.*arr.*AccessDenied"):
            scheduler.cancel(s, records)  # "one" finished: nothing to terminate
        stub.assert_no_pending_responses()


def test_batch_describes_in_hundreds_and_waits_for_children_of_a_new_array(tmp_path):
    client = real_client("batch")
    scheduler = batch_scheduler(client)
    records = [{"job_id": "big", "chunks": list(range(150)), "array": True, "offset": 0}]
    ids = [f"big:{i}" for i in range(150)] + ["big"]
    with Stubber(client) as stub:
        stub.add_response("describe_jobs", {"jobs": []}, {"jobs": ids[:100]})
        stub.add_response("describe_jobs", {"jobs": [{"jobName": "n", "jobId": "big", "jobQueue": "q",
                                                      "status": "PENDING", "startedAt": 1, "jobDefinition": "d"}]},
                          {"jobs": ids[100:]})
        result = scheduler.poll(spec(tmp_path), records)
        assert len(result) == 150 and {s.state for s in result.values()} == {TaskState.PENDING}
        stub.assert_no_pending_responses()


def test_batch_lost_submissions_are_found_by_name_never_repeated_blindly(dummy_batch, tmp_path):
    scheduler = batch_scheduler(dummy_batch, job_queue="dummy-queue")
    s = spec(tmp_path)
    dummy_batch.inject_lost_reply("SubmitJob", 1)
    (record,) = scheduler.submit(s, [0, 1, 2])
    assert record["job_id"] in dummy_batch.jobs and len(dummy_batch.calls_to("SubmitJob")) == 1
    listing = dummy_batch.calls_to("ListJobs")[0]
    assert listing["filters"] == [{"name": "JOB_NAME", "values": [record["job_name"]]}]
    dummy_batch.inject_throttle("SubmitJob", 1)
    with pytest.raises(SubmissionRefused, match="throttled"):
        list(scheduler.submit(s, [5]))
    dummy_batch.inject_error("SubmitJob", "ServerException", "internal", times=scheduler.retries + 1, status=500)
    with pytest.raises(SubmissionRefused, match="ServerException"):
        list(scheduler.submit(s, [7, 8]))
    (later,) = scheduler.submit(s, [7, 8])  # the engine's next try looks for the name first
    parents = [j for j in dummy_batch.jobs.values() if j.get("size")]
    assert len(parents) == 2 and later["job_name"] == dummy_batch.calls_to("SubmitJob")[-1]["jobName"]



def test_batch_keeps_the_oldest_of_two_jobs_a_lagging_listing_let_in(dummy_batch, tmp_path):
    scheduler = batch_scheduler(dummy_batch, job_queue="dummy-queue")
    dummy_batch.list_page_size = 1  # the newest on the first page, the oldest on the second
    s = spec(tmp_path)
    dummy_batch.inject_error("SubmitJob", "ServerException", "internal", times=scheduler.retries + 1, status=500)
    with pytest.raises(SubmissionRefused):
        list(scheduler.submit(s, [3, 4]))
    params = dummy_batch.calls_to("SubmitJob")[-1]
    first = dummy_batch.submit_job(**params)["jobId"]  # the answers were lost, the jobs got in
    second = dummy_batch.submit_job(**params)["jobId"]
    (record,) = scheduler.submit(s, [3, 4])
    assert record["job_id"] == first
    assert [call["jobId"] for call in dummy_batch.calls_to("TerminateJob")] == [second]


def test_batch_lost_array_is_taken_when_more_chunks_wait_with_it_now(dummy_batch, tmp_path):
    scheduler = batch_scheduler(dummy_batch, job_queue="dummy-queue")
    s = spec(tmp_path)
    dummy_batch.inject_error("SubmitJob", "ServerException", "internal", times=scheduler.retries + 1, status=500)
    with pytest.raises(SubmissionRefused):
        list(scheduler.submit(s, [3, 4]))
    lost = dummy_batch.submit_job(**dummy_batch.calls_to("SubmitJob")[-1])["jobId"]  # it got in
    records = list(scheduler.submit(s, [3, 4, 5]))  # chunk 5 joined the waiting ones meanwhile
    assert [(r["job_id"], r["chunks"]) for r in records][0] == (lost, [3, 4])
    assert [r["chunks"] for r in records] == [[3, 4], [5]] and not dummy_batch.calls_to("TerminateJob")


def lagging_listing(dummy_batch, times=None):
    """list_jobs shows no job (eventual consistency) for its next ``times`` calls, or until the
    function returned is called."""
    real, calls, lagging = dummy_batch.list_jobs, [], [True]

    def list_jobs(**params):
        calls.append(params)
        if lagging and (times is None or len(calls) <= times):
            return {"jobSummaryList": []}
        return real(**params)
    dummy_batch.list_jobs = list_jobs
    return lagging.clear


def test_batch_duplicate_a_lagging_listing_let_in_is_terminated_at_the_next_poll(dummy_batch, tmp_path):
    scheduler = batch_scheduler(dummy_batch, job_queue="dummy-queue")
    s = spec(tmp_path)
    dummy_batch.inject_lost_reply("SubmitJob", 1, error="ConnectionClosedError")
    lagging_listing(dummy_batch, 1)
    (record,) = scheduler.submit(s, [3, 4])  # the lost one was not listed yet: submitted again
    (lost,) = [j["jobId"] for j in dummy_batch.jobs.values() if j.get("size") and j["jobId"] != record["job_id"]]
    scheduler.poll(s, [record])
    assert [call["jobId"] for call in dummy_batch.calls_to("TerminateJob")] == [lost]


def test_batch_cancel_terminates_a_lost_submission_nothing_recorded(dummy_batch, tmp_path):
    scheduler = batch_scheduler(dummy_batch, job_queue="dummy-queue")
    s = spec(tmp_path)
    dummy_batch.inject_lost_reply("SubmitJob", scheduler.retries + 1)
    caught_up = lagging_listing(dummy_batch)  # every call got in, none was listed in time
    with pytest.raises(SubmissionRefused):
        list(scheduler.submit(s, [0, 1]))
    caught_up()
    scheduler.cancel(s, [])  # the pool is terminated before the engine tried again
    lost = {j["jobId"] for j in dummy_batch.jobs.values() if j.get("size")}
    assert len(lost) == scheduler.retries + 1
    assert {call["jobId"] for call in dummy_batch.calls_to("TerminateJob")} == lost
    assert {dummy_batch._view(j)["status"] for j in dummy_batch.jobs.values()} == {"FAILED"}

# -- end to end on the dummies, with faults ---------------------------------------------------
def events(work_root):
    (kept,) = list(work_root.iterdir())
    return kept, log_events(kept)


def aws_pool(cls, kind, **options):
    from dummy_queues.aws import pool_options

    pool = cls(**{**pool_options(kind), **options.pop("pool", {})}, keep_work_dir=True, progress=False,
               polling_interval=0.3, filesystem_lag=0.3, **options)
    pool._scheduler.min_poll_interval = 0.1
    pool._scheduler.backoff = 0.0
    return pool


def traced_square(args):
    """Notes its start and end in one file (O_APPEND: a total order); the first tasks wait
    until two have started, so that a throttle that let a third one in would be seen."""
    x, trace = args
    with open(trace, "a") as f:
        f.write(f"s{x}\n")
    deadline = time.monotonic() + 60
    while open(trace).read().count("s") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(trace, "a") as f:
        f.write(f"e{x}\n")
    return x * x


def test_ecs_survives_placement_failures_throttling_and_stops(dummy_ecs, tmp_path, monkeypatch):
    dummy_ecs.inject_placement_failures(2, "RESOURCE:CPU")
    dummy_ecs.inject_throttle("RunTask", 1)
    dummy_ecs.inject_throttle("DescribeTasks", 1)
    dummy_ecs.inject_stop(chunk=1, stop_code="SpotInterruption", stopped_reason="Your Spot Task was interrupted.")
    dummy_ecs.inject_stop(chunk=2, exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage")
    monkeypatch.setattr("poolparty_raster.submissions.FIRST_RETRY", 0.05)
    # the out-of-memory stop is resubmitted unchanged only because retry_resources asks it
    pool = aws_pool(pp.EcsPool, "ecs", num_simultaneously_running_tasks=2,
                    retry_resources=lambda attempt, reason: {})
    trace = str(tmp_path / "trace")
    assert pool.map(traced_square, [(x, trace) for x in range(4)], chunksize=1) == [0, 1, 4, 9]
    kept, log = events(tmp_path / "work")
    reasons = " | ".join(e["reason"] for e in log if e["event"] == "lost")
    assert reasons.count("|") == 1 and "spot interruption" in reasons and "out of memory" in reasons
    assert any("RESOURCE:CPU" in e["reason"] for e in log if e["event"] == "submit_deferred")
    jobs = WorkDir(str(kept)).read_jobs()
    assert len(jobs) == 6 and all(j["task_arn"] in dummy_ecs.tasks for j in jobs)  # 4 + 2 resubmitted
    running, most = set(), 0  # the engine's throttle: never more than 2 chunks at work
    for line in Path(trace).read_text().split():
        (running.add if line[0] == "s" else running.discard)(line[1:])
        most = max(most, len(running))
    assert most == 2
    for params in dummy_ecs.calls_to("RunTask"):
        assert params["count"] == 1 and len(json.dumps(params["overrides"])) < 8192


@pytest.mark.parametrize("kind", ["ecs", "batch"])
def test_dropped_connections_cost_a_retry_not_the_map_nor_a_second_task(kind, request, tmp_path):
    dummy = request.getfixturevalue(f"dummy_{kind}")
    submit, poll = ("RunTask", "DescribeTasks") if kind == "ecs" else ("SubmitJob", "DescribeJobs")
    dummy.inject_lost_reply(submit, 1, error="ConnectionClosedError")  # it acted: asked, not repeated
    dummy.inject_transport_error(submit, "SSLError")
    dummy.inject_transport_error(poll, "HTTPClientError", times=6)  # a whole poll fails
    dummy.inject_lost_reply(poll, 1, error="ResponseStreamingError")
    pool = aws_pool(pp.EcsPool if kind == "ecs" else pp.AwsBatchPool, kind)
    assert pool.map(square, range(3), chunksize=1) == [0, 1, 4]
    _, log = events(tmp_path / "work")
    assert any(e["event"] == "poll_failed" and "Connection reset" in e["error"] for e in log)
    if kind == "ecs":
        assert len(dummy.tasks) == 3
    else:
        assert sum(j.get("size", 1) for j in dummy.jobs.values() if ":" not in j["jobId"]) == 3


RATE_LIMITED_STARTS = {
    "ecs": {"stop_code": "TaskFailedToStart", "stopped_reason": (
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource "
        "retrieval failed: unable to retrieve ecr registry auth: service call has been retried 3 "
        "time(s): RequestError: send request failed caused by: ThrottlingException: Rate exceeded")},
    "batch": {"status_reason": "Task failed to start", "reason": (
        "CannotPullContainerError: Error response from daemon: toomanyrequests: You have reached "
        "your pull rate limit. You may increase the limit by authenticating and upgrading")}}


@pytest.mark.parametrize("kind", ["ecs", "batch"])
def test_a_start_a_rate_limit_stopped_is_resubmitted_not_fatal(kind, request, tmp_path):
    dummy = request.getfixturevalue(f"dummy_{kind}")
    dummy.inject_stop(chunk=1, exit_code=None, **RATE_LIMITED_STARTS[kind])
    pool = aws_pool(pp.EcsPool if kind == "ecs" else pp.AwsBatchPool, kind)
    assert pool.map(square, range(3), chunksize=1) == [0, 1, 4]
    _, log = events(tmp_path / "work")
    (lost,) = [e for e in log if e["event"] == "lost"]
    assert lost["chunk"] == 1 and re.search("Rate exceeded|toomanyrequests", lost["reason"])


def test_nested_path_mapping_prefixes_map_by_the_longest_whatever_their_order(dummy_ecs, tmp_path, monkeypatch):
    home, other = tmp_path / "home", tmp_path / "home2"
    (home / "efs").mkdir(parents=True)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "efs").symlink_to(home / "efs")  # the container's EFS mount
    (tmp_path / "roothome").mkdir()                       # its home: no efs below it
    monkeypatch.setenv("MY_DATA", f"{home / 'efs' / 'data'}:{home / 'lib'}")
    monkeypatch.setenv("MY_OTHER", str(other / "efs"))
    mapping = {str(home): str(tmp_path / "roothome"), str(home / "efs"): str(tmp_path / "mnt" / "efs")}
    pool = aws_pool(pp.EcsPool, "ecs", path_mapping=mapping, work_dir=str(home / "efs" / "w"))
    ((data, other_seen),) = pool.map(seen_variables, [("MY_DATA", "MY_OTHER")])
    assert data == f"{tmp_path / 'mnt' / 'efs' / 'data'}:{tmp_path / 'roothome' / 'lib'}"
    assert other_seen == str(other / "efs")  # /home2 is not below /home


def seen_variables(names):
    return tuple(os.environ.get(name) for name in names)


def test_ecs_registers_tags_and_deregisters_its_task_definition(dummy_ecs):
    pool = aws_pool(pp.EcsPool, "ecs", container_image="python:3",
                     pool={"task_definition": None}, tags={"team": "geo"})
    assert pool.map(square, range(3)) == [0, 1, 4]
    (ours,) = [d for d in dummy_ecs.definitions.values() if d["family"].startswith("poolparty-pp")]
    assert ours["status"] == "INACTIVE" and {"key": "team", "value": "geo"} in ours["tags"]
    assert all({"key": "team", "value": "geo"} in p["tags"] for p in dummy_ecs.calls_to("RunTask"))


def test_ecs_failed_image_pull_fails_the_map_at_once(dummy_ecs):
    dummy_ecs.inject_stop(times=100, stop_code="TaskFailedToStart", exit_code=None,
                          stopped_reason="CannotPullContainerError: pull access denied for img")
    pool = aws_pool(pp.EcsPool, "ecs")
    with pytest.raises(SchedulerError, match="cannot run: .*CannotPullContainerError"):
        pool.map(square, range(3), chunksize=1)
    assert len(dummy_ecs.calls_to("RunTask")) == 3  # no resubmission


def hang(_):
    time.sleep(600)  # killed by the cancel


def test_ecs_permanent_poll_error_fails_the_map(dummy_ecs):
    dummy_ecs.inject_error("DescribeTasks", "ClusterNotFoundException", "Cluster not found.", times=100)
    pool = aws_pool(pp.EcsPool, "ecs")
    with pytest.raises(SchedulerError, match="ClusterNotFoundException"):
        pool.map(hang, [None])
    assert len(dummy_ecs.calls_to("DescribeTasks")) == 3  # the engine's bound, not retried within
    assert {t["stopCode"] for t in dummy_ecs.tasks.values()} == {"UserInitiated"}


def test_ecs_placement_refusals_give_up_when_nothing_runs(dummy_ecs, monkeypatch):
    dummy_ecs.inject_placement_failures(1000, "RESOURCE:MEMORY")
    monkeypatch.setattr(ecs, "PLACEMENT_GIVE_UP_AFTER", 0.0)
    monkeypatch.setattr("poolparty_raster.submissions.FIRST_RETRY", 0.05)
    pool = aws_pool(pp.EcsPool, "ecs")
    with pytest.raises(SchedulerError, match="RESOURCE:MEMORY.*none of the map's jobs was queued"):
        pool.map(square, range(2))


def container_view(_):
    return (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), os.environ["PATH"],
            os.environ.get("LD_LIBRARY_PATH"), os.environ.get("GDAL_HTTP_TIMEOUT"),
            os.environ.get("POOLPARTY_RASTER_WORKER_REEXEC"), sys.orig_argv[1], sys.argv[0])


def test_container_keeps_its_own_credentials_and_paths(dummy_ecs, tmp_path, monkeypatch):
    real, seen = tmp_path / "driver", tmp_path / "container"
    real.mkdir()
    seen.symlink_to(real)  # the "container" sees the same files under another path
    dummy_ecs.register_task_definition(
        family="own", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="512",
        containerDefinitions=[{"name": "poolparty", "image": "img", "environment": [
            {"name": "AWS_ACCESS_KEY_ID", "value": "task-role"}, {"name": "AWS_PROFILE", "value": "none"},
            {"name": "PATH", "value": "/container/bin:" + os.environ["PATH"]},
            {"name": "LD_LIBRARY_PATH", "value": "/container/lib"}]}])
    for name, value in (("AWS_ACCESS_KEY_ID", "driver-key"), ("AWS_PROFILE", "laptop"),
                        ("LD_LIBRARY_PATH", "/laptop/lib"), ("GDAL_HTTP_TIMEOUT", "30")):
        monkeypatch.setenv(name, value)
    pool = aws_pool(pp.EcsPool, "ecs", pool={"task_definition": "own"},
                     path_mapping={str(real): str(seen)}, work_dir=str(real / "w"))
    ((key, profile, path, libs, gdal, reexec, flag, script),) = pool.map(container_view, [0])
    assert (key, profile, libs, gdal, reexec, flag) == ("task-role", "none", "/container/lib", "30", "1", "-c")
    assert path.startswith("/container/bin:") and script == str(seen / "w" / "script.py")
    # what the applier puts beside the work_dir, the containers find under their own path
    assert pool.work_dir_parent == str(real)
    assert pool.worker_path(str(real / "scratch")) == str(seen / "scratch")


@pytest.mark.parametrize("cls, kind, fixture", [(pp.EcsPool, "ecs", "dummy_ecs"),
                                                 (pp.AwsBatchPool, "batch", "dummy_batch")])
def test_driver_credentials_never_reach_the_shared_work_dir(request, tmp_path, monkeypatch,
                                                            cls, kind, fixture):
    """script.py sits on EFS, readable by whoever can read the work_dir's filesystem: the
    driver's keys stay out of it (the containers use their task role's)."""
    request.getfixturevalue(fixture)
    secrets = {"AWS_ACCESS_KEY_ID": "AKIADRIVERKEY", "AWS_SECRET_ACCESS_KEY": "driver-secret-key",
               "AWS_SESSION_TOKEN": "driver-session-token"}
    for name, value in {**secrets, "GDAL_HTTP_TIMEOUT": "30"}.items():
        monkeypatch.setenv(name, value)
    pool = aws_pool(cls, kind, work_dir=str(tmp_path / "w"))
    assert pool.map(square, range(3)) == [0, 1, 4]
    script = (tmp_path / "w" / "script.py").read_text()
    assert not [value for value in secrets.values() if value in script]
    assert "GDAL_HTTP_TIMEOUT" in script  # configuration still travels


def test_batch_survives_throttling_lost_answers_and_killed_children(dummy_batch, tmp_path, monkeypatch):
    dummy_batch.inject_throttle("SubmitJob", 1)
    dummy_batch.inject_lost_reply("SubmitJob", 1)
    dummy_batch.inject_throttle("DescribeJobs", 2)
    dummy_batch.inject_stop(chunk=2, status_reason="Host EC2 (instance i-1) terminated.")
    monkeypatch.setattr("poolparty_raster.submissions.FIRST_RETRY", 0.05)
    pool = aws_pool(pp.AwsBatchPool, "batch", num_simultaneously_running_tasks=3)
    assert pool.map(square, range(5), chunksize=1) == [0, 1, 4, 9, 16]
    _, log = events(tmp_path / "work")
    lost = [e for e in log if e["event"] == "lost"]
    assert len(lost) == 1 and lost[0]["reason"].startswith("instance lost")
    sizes = sorted(j.get("size", 1) for j in dummy_batch.jobs.values() if ":" not in j["jobId"])
    assert sum(sizes) == 6 and max(sizes) <= 3  # 5 chunks + 1 resubmitted, no duplicate array


def test_batch_oom_is_named_in_the_task_lost_error(dummy_batch):
    dummy_batch.inject_stop(chunk=0, exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage")
    pool = aws_pool(pp.AwsBatchPool, "batch", max_num_resubmissions=0)
    with pytest.raises(pp.TaskLostError, match="out of memory"):
        pool.map(square, [1])


def test_dummies_refuse_what_the_service_refuses(dummy_ecs, dummy_batch):
    from botocore.exceptions import ClientError, ParamValidationError

    with pytest.raises(ClientError, match="between 2 and 10,000"):
        dummy_batch.submit_job(jobName="j", jobQueue="q", jobDefinition="d", arrayProperties={"size": 1})
    with pytest.raises(ClientError, match="Job name"):
        dummy_batch.submit_job(jobName="-j.1", jobQueue="q", jobDefinition="d")
    with pytest.raises(ParamValidationError):
        dummy_batch.submit_job(jobName="j", jobQueue="q", jobDefinition="d", containerOverrides={"vcpu": 1})
    with pytest.raises(ClientError, match="8192"):
        dummy_ecs.run_task(taskDefinition="poolparty-dummy", overrides={"containerOverrides": [
            {"name": "poolparty", "environment": [{"name": "X", "value": "y" * 9000}]}]})
    with pytest.raises(ClientError, match="Network Configuration must be provided"):
        dummy_ecs.run_task(taskDefinition="poolparty-dummy", launchType="FARGATE")
    with pytest.raises(ClientError, match="cpu"):
        dummy_ecs.register_task_definition(family="f", requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
                                           containerDefinitions=[{"name": "c", "image": "i"}])
    with pytest.raises(ClientError, match="memory"):
        dummy_ecs.register_task_definition(family="f", containerDefinitions=[{"name": "c", "image": "i"}])
    with pytest.raises(ClientError, match="100"):
        dummy_ecs.describe_tasks(tasks=[TASK] * 101)


def test_pools_import_boto3_lazily_and_helpers_build_valid_options():
    with pytest.raises(TypeError, match="did you mean 'task_definition'"):
        pp.EcsPool(task_defintion="x")
    code = ("import sys, poolparty_raster as pp; pp.EcsPool; pp.AwsBatchPool; "
            "import poolparty_raster.schedulers.ecs, poolparty_raster.schedulers.awsbatch; "
            "pp.EcsPool(task_definition='td', subnets=['s']); pp.AwsBatchPool(job_queue='q', job_definition='d'); "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    fargate = pp.EcsPool.extra_params_fargate(container_image="img", execution_role_arn="arn:e",
                                              subnet="subnet-1", security_groups=["sg-1"],
                                              efs_file_system_id="fs-1", efs_container_path="/mnt/efs")
    assert fargate["launch_type"] == "FARGATE" and fargate["efs_container_path"] == "/mnt/efs"
    private = pp.EcsPool.extra_params_private_cluster(cluster="mine", task_definition="td:1")
    for options in (fargate, private):
        pp.EcsPool(**options, ecs_client=object())  # every key is a valid option


def test_missing_region_or_credentials_are_named_before_a_map_starts(tmp_path):
    class NoRegionError(Exception):
        pass

    class Session:
        def __init__(self, region_fails):
            self.region_fails = region_fails

        def client(self, service, **options):
            if self.region_fails:
                raise NoRegionError("You must specify a region.")
            return object()

        def get_credentials(self):
            return None

    for region_fails, words in ((True, "no AWS region"), (False, "no AWS credentials")):
        pool = pp.AwsBatchPool(job_queue="q", job_definition="d", boto3_session=Session(region_fails),
                               work_dir=str(tmp_path / "w"))
        with pytest.raises(pp.SchedulerUnavailableError, match=words):
            pool.map(square, [1])
    assert not (tmp_path / "w").exists()


def test_applier_maps_cw_ecs_and_cw_awsbatch_to_these_pools():
    from poolparty_raster.applier.controls import CW_AWSBATCH, CW_ECS, ConcurrencyStyle
    from poolparty_raster.applier.poolfactory import make_pool

    ecs_pool = make_pool(ConcurrencyStyle(computeWorkerKind=CW_ECS, numComputeWorkers=3, computeWorkerExtraParams={
        "task_definition": "td", "subnets": ["s"], "ecs_client": object()}), "rios")
    assert isinstance(ecs_pool, pp.EcsPool) and ecs_pool.max_workers == 3
    batch = make_pool(ConcurrencyStyle(computeWorkerKind=CW_AWSBATCH, computeWorkerExtraParams={
        "job_queue": "q", "job_definition": "d", "batch_client": object()}), None)
    assert isinstance(batch, pp.AwsBatchPool)
