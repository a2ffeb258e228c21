"""What each backend makes of its scheduler's words: every state and reason the notes on the
real schedulers record (shared/notes/real-slurm.md, real-sge.md), PBS Pro's documentation and
LSF's (tests/golden/lsf/, written from IBM's LSF 10.1 reference: no LSF runs here), and the
refusals of the submission commands. No scheduler runs here: these are the parsers."""
from __future__ import annotations

import pytest

from poolparty_raster.errors import SchedulerOutputError
from pathlib import Path

from poolparty_raster.schedulers import lsf, pbs, sge, slurm
from poolparty_raster.schedulers.base import TaskState

PENDING, RUNNING, FINISHED = TaskState.PENDING, TaskState.RUNNING, TaskState.FINISHED
ERROR, FATAL = TaskState.ERROR, TaskState.FATAL
ARRAY = [{"job_id": "11", "chunks": list(range(10)), "array": True, "offset": 0}]
GOLDEN = Path(__file__).with_name("golden")


@pytest.mark.parametrize("state, reason, expected", [
    ("COMPLETED", "None", FINISHED), ("FAILED", "NonZeroExitCode", FINISHED),
    ("FAILED", "JobLaunchFailure", FINISHED), ("CANCELLED", "None", FINISHED),
    ("TIMEOUT", "TimeLimit", FINISHED), ("NODE_FAIL", "NodeDown", FINISHED),
    ("OUT_OF_MEMORY", "OutOfMemory", FINISHED), ("PREEMPTED", "None", FINISHED),
    ("RUNNING", "None", RUNNING), ("COMPLETING", "None", RUNNING), ("SUSPENDED", "None", RUNNING),
    ("PENDING", "None", PENDING), ("PENDING", "Resources", PENDING), ("PENDING", "Priority", PENDING),
    ("PENDING", "JobArrayTaskLimit", PENDING), ("PENDING", "BeginTime", PENDING),
    ("PENDING", "JobHeldUser", PENDING),  # the user's own hold: theirs to release
    ("PENDING", "ReqNodeNotAvail, UnavailableNodes:vm", PENDING),
    ("PENDING", "QOSJobLimit", PENDING), ("PENDING", "PartitionDown", PENDING),
    ("PENDING", "JobHeldAdmin", ERROR), ("PENDING", "launch failed requeued held", ERROR),
    ("PENDING", "job requeued in held state", ERROR), ("REQUEUE_HOLD", "job requeued in held state", ERROR),
    ("RESV_DEL_HOLD", "None", ERROR),
    ("PENDING", "PartitionConfig", FATAL), ("PENDING", "DependencyNeverSatisfied", FATAL),
    ("PENDING", "InvalidAccount", FATAL), ("PENDING", "InvalidQOS", FATAL),
    ("PENDING", "BadConstraints", FATAL),
    # held for good, though still queued: cancelled and submitted again
    ("SPECIAL_EXIT", "None", ERROR), ("REQUEUE_HOLD", "None", ERROR),
    ("PENDING", "JobHoldMaxRequeue", ERROR),
    # one job asks more (or less) than a QOS, association or partition ever allows
    ("PENDING", "QOSMaxWallDurationPerJobLimit", FATAL), ("PENDING", "QOSMaxCpuPerJobLimit", FATAL),
    ("PENDING", "QOSMaxNodePerJobLimit", FATAL), ("PENDING", "QOSMaxGRESPerJob", FATAL),
    ("PENDING", "QOSMaxMemoryPerJob", FATAL), ("PENDING", "QOSMaxCpuMinutesPerJobLimit", FATAL),
    ("PENDING", "AssocMaxCpuPerJobLimit", FATAL), ("PENDING", "AssocMaxNodePerJobLimit", FATAL),
    ("PENDING", "AssocMaxWallDurationPerJobLimit", FATAL), ("PENDING", "AssocMaxMemPerJob", FATAL),
    ("PENDING", "QOSMaxCpuPerNode", FATAL), ("PENDING", "AssocMaxGRESPerNode", FATAL),
    ("PENDING", "QOSMinCpuNotSatisfied", FATAL), ("PENDING", "QOSMinMemory", FATAL),
    ("PENDING", "PartitionTimeLimit", FATAL), ("PENDING", "PartitionNodeLimit", FATAL),
    ("PENDING", "QOSNotAllowed", FATAL), ("PENDING", "MaxMemPerLimit", FATAL),
    # limits on what is running or queued pass as the user's other jobs end
    ("PENDING", "QOSMaxJobsPerUserLimit", PENDING), ("PENDING", "QOSMaxCpuPerUserLimit", PENDING),
    ("PENDING", "QOSMaxSubmitJobPerUserLimit", PENDING), ("PENDING", "AssocMaxJobsLimit", PENDING),
    ("PENDING", "AssocGrpCpuLimit", PENDING), ("PENDING", "QOSGrpNodeLimit", PENDING),
    ("PENDING", "MaxJobsPerAccount", PENDING), ("PENDING", "QOSMaxNodePerUserLimit", PENDING),
])
def test_squeue_states_and_reasons(state, reason, expected):
    statuses = slurm.parse_squeue(f"11_4|11|4|{state}|{reason}\n", ARRAY)
    assert statuses[("11", 4)].state is expected


def test_squeue_skips_collapsed_ranges_and_quotes_what_it_cannot_read():
    assert slurm.parse_squeue("11_[3-9%2]|11|N/A|PENDING|JobArrayTaskLimit\n", ARRAY) == {}
    with pytest.raises(SchedulerOutputError, match=r"11_4\|11\|4\|BOGUS\|None"):
        slurm.parse_squeue("11_4|11|4|BOGUS|None", ARRAY)
    with pytest.raises(SchedulerOutputError, match="garbled"):
        slurm.parse_squeue("garbled line", ARRAY)


@pytest.mark.parametrize("stderr, kind", [
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", "transient"),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", "answer_lost"),
    ("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", "transient"),
    ("sbatch: error: QOSMaxSubmitJobPerUserLimit", "limit"),
    ("sbatch: error: AssocMaxSubmitJobLimit", "limit"),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
     "(job submit limit, user's size and/or time limits)", "policy"),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", "permanent"),
    ("sbatch: error: Batch job submission failed: Invalid job array specification", "permanent"),
    # killed, or a message not known here: the listing is asked first, and repeats fail the map
    ("", "unknown"), ("sbatch: unrecognized option '--bogus'", "unknown"),
])
def test_sbatch_refusals(stderr, kind):
    assert slurm.classify_refusal(stderr) == kind


@pytest.mark.parametrize("stdout, job_id", [("11\n", "11"), ("11;cluster\n", "11"), ("", None),
                                             ("\u00bf#garbled", None), ("Submitted batch job 11", None)])
def test_sbatch_parsable_ids(stdout, job_id):
    assert slurm.parse_job_id(stdout) == job_id


@pytest.mark.parametrize("letters, expected", [
    ("qw", PENDING), ("hqw", PENDING), ("Rq", PENDING), ("r", RUNNING), ("t", RUNNING),
    ("Rr", RUNNING), ("s", RUNNING), ("S", RUNNING), ("T", RUNNING), ("dr", FINISHED),
    ("dt", FINISHED), ("Eqw", ERROR), ("Ehqw", ERROR),
])
def test_qstat_state_letters(letters, expected):
    assert sge.classify(letters).state is expected


def test_qstat_xml_expands_task_ranges_and_lists():
    xml = """<?xml version='1.0'?><job_info><queue_info></queue_info><job_info>
      <job_list state="pending"><JB_job_number>18</JB_job_number><JB_name>ppx</JB_name>
        <state>qw</state><tasks>3-7:2</tasks></job_list>
      <job_list state="pending"><JB_job_number>18</JB_job_number><JB_name>ppx</JB_name>
        <state>Eqw</state><tasks>9,10</tasks></job_list>
      <job_list state="pending"><JB_job_number>19</JB_job_number><JB_name>other</JB_name>
        <state>qw</state></job_list></job_info></job_info>"""
    jobs = [{"job_id": "18", "chunks": list(range(20)), "array": True, "offset": 100}]
    statuses = sge.parse_qstat_xml(xml, "ppx", jobs)
    assert {chunk: s.state for (_, chunk), s in statuses.items()} == {
        102: PENDING, 104: PENDING, 106: PENDING, 108: ERROR, 109: ERROR}
    with pytest.raises(SchedulerOutputError):
        sge.parse_qstat_xml("<job_info><unclosed>", "ppx", jobs)


@pytest.mark.parametrize("stderr, kind", [
    ('Unable to run job: unable to send message to qmaster using port 6444 on host "vm": got send error', "transient"),
    ("Unable to run job: failed receiving gdi request response for mid=1 (got syncron message receive timeout error).", "answer_lost"),
    ("Unable to run job: job rejected: Only 10 jobs are allowed per user (current job count: 10)", "limit"),
    ("Unable to run job: Job was rejected because job requests unknown queue \"nosuch\".", "permanent"),
])
def test_qsub_refusals(stderr, kind):
    assert sge.classify_refusal(stderr) == kind


@pytest.mark.parametrize("stdout, job_id", [("4\n", "4"), ("18.1-10:1\n", "18"), ("", None),
                                             ('Your job 4 ("x") has been submitted', None)])
def test_qsub_terse_ids(stdout, job_id):
    assert sge.parse_job_id(stdout) == job_id


@pytest.mark.parametrize("letter, expected", [
    ("Q", PENDING), ("W", PENDING), ("T", PENDING), ("M", PENDING), ("R", RUNNING), ("E", RUNNING),
    ("B", RUNNING), ("S", RUNNING), ("U", RUNNING), ("F", FINISHED), ("X", FINISHED), ("H", ERROR),
])
def test_pbs_job_states(letter, expected):
    text = '{"Jobs": {"12[3].pbsserver": {"job_state": "%s"}}}' % letter
    jobs = [{"job_id": "12[].pbsserver", "chunks": list(range(10)), "array": True, "offset": 0}]
    assert pbs.parse_qstat_json(text, jobs)[("12[].pbsserver", 3)].state is expected


@pytest.mark.parametrize("stdout, job_id", [("123.pbsserver\n", "123.pbsserver"),
                                             ("123[].pbsserver", "123[].pbsserver"), ("", None),
                                             ("qsub: End of File", None)])
def test_pbs_qsub_ids(stdout, job_id):
    assert pbs.parse_job_id(stdout) == job_id


def test_a_clean_end_is_told_apart_from_a_failed_one():
    """The engine gives a job that ended well longer for its result to show (NFS caches)."""
    statuses = slurm.parse_squeue("11_1|11|1|COMPLETED|None\n11_2|11|2|FAILED|NonZeroExitCode\n", ARRAY)
    assert statuses[("11", 1)].succeeded and not statuses[("11", 2)].succeeded
    text = ('{"Jobs": {"12[1].s": {"job_state": "X", "Exit_status": 0},'
            ' "12[2].s": {"job_state": "X", "Exit_status": 3}}}')
    jobs = [{"job_id": "12[].s", "chunks": [0, 1, 2], "array": True, "offset": 0}]
    statuses = pbs.parse_qstat_json(text, jobs)
    assert statuses[("12[].s", 1)].succeeded and not statuses[("12[].s", 2)].succeeded


# An LSF array of chunks 10-19 (indices 1-10, so offset 9), and its resubmitted chunk 10.
LSF_JOBS = [{"job_id": "1234", "chunks": list(range(10, 20)), "array": True, "offset": 9},
            {"job_id": "1240", "chunks": [10], "array": True, "offset": 9}]


def test_bjobs_json_states_from_the_documented_sample():
    statuses = lsf.parse_bjobs_json((GOLDEN / "lsf" / "bjobs_json_states.json").read_text(),
                                    LSF_JOBS)
    assert {key: s.state for key, s in statuses.items()} == {
        ("1234", 10): FINISHED, ("1234", 11): FINISHED, ("1234", 12): RUNNING,
        ("1234", 13): RUNNING, ("1234", 14): RUNNING, ("1234", 15): PENDING,
        ("1234", 16): ERROR,  # PSUSP: held while pending, nothing releases it for the pool
        ("1234", 17): FINISHED,  # ZOMBI: killed while its host was out of reach
        ("1234", 18): ERROR,  # UNKWN: its host is out of reach
        ("1234", 19): FINISHED, ("1240", 10): RUNNING}
    assert statuses[("1234", 10)].succeeded and not statuses[("1234", 11)].succeeded
    assert statuses[("1234", 11)].reason == "EXIT exit 17"
    assert "running element limit" in statuses[("1234", 15)].reason


def test_bjobs_json_quotes_what_it_cannot_read():
    with pytest.raises(SchedulerOutputError, match="BOGUS"):
        lsf.parse_bjobs_json('{"RECORDS": [{"JOBID": "1234", "STAT": "BOGUS", '
                             '"JOB_NAME": "pp[1]"}]}', LSF_JOBS)
    with pytest.raises(SchedulerOutputError, match="garbled"):
        lsf.parse_bjobs_json("garbled", LSF_JOBS)
    assert lsf.parse_bjobs_json("", LSF_JOBS) == {}


@pytest.mark.parametrize("returncode, stderr, text", [
    (0, "", "{}"), (255, "No job found", ""), (255, "Job <pp9f3084c126> is not found", ""),
    (255, "LSF is down. Please wait ...", None)])
def test_bjobs_listing_tells_no_job_from_a_failure(returncode, stderr, text):
    assert lsf.listing(returncode, "{}" if returncode == 0 else "", stderr) == text


@pytest.mark.parametrize("stderr, kind", [
    ("LSF is down. Please wait ...\nbatch system daemon not responding ... still trying", "transient"),
    ("Cannot connect to LSF. Please wait ...", "transient"),
    ("Failed in an LSF library call: Communication time out", "answer_lost"),
    ("User <ann>: Pending job threshold reached. Job not submitted.", "limit"),
    ("No such queue. Job not submitted.", "permanent"),
    ("Job array index too large. Job not submitted.", "permanent"),
    ("", "unknown"), ("bsub: illegal option -- x", "unknown"),
])
def test_bsub_refusals(stderr, kind):
    assert lsf.classify_refusal(stderr) == kind


@pytest.mark.parametrize("stdout, job_id", [
    ((GOLDEN / "lsf" / "bsub_submitted.txt").read_text(), "1234"), ("", None),
    ("\u00bf#garbled", None), ("Job <> is submitted", None)])
def test_bsub_ids(stdout, job_id):
    assert lsf.parse_job_id(stdout) == job_id


def test_max_job_array_size_from_badmin_showconf():
    text = (GOLDEN / "lsf" / "badmin_showconf_mbd.txt").read_text()
    assert lsf.parse_max_array_size(text) == 2000
    assert lsf.parse_max_array_size("MBD configuration at ...\n") is None
