"""LSF's memory and run-limit kills told apart by bjobs' exit_reason (TERM_MEMLIMIT,
TERM_RUNLIMIT), so that neither is resubmitted unchanged; and exit code 140, the run limit,
where bjobs has no exit_reason (an LSF older than the field)."""
from __future__ import annotations

import json
import time

import pytest

import poolparty_raster as pp
from poolparty_raster.errors import TaskLostError
from poolparty_raster.schedulers import lsf

FAST = {"polling_interval": 0.3, "filesystem_lag": 0.3, "progress": False}
MEMLIMIT = "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit"
RUNLIMIT = "TERM_RUNLIMIT: job killed after reaching LSF run time limit"


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def flag_values(queue, flag: str) -> list[str]:
    """The value after ``flag`` in each submission the dummy received, in order."""
    return [s["argv"][i + 1] for s in queue.submissions for i, arg in enumerate(s["argv"])
            if arg == flag]


@pytest.mark.parametrize("exit_code, exit_reason, exceeded", [
    ("137", MEMLIMIT, "mem"),
    ("140", RUNLIMIT, "time"),
    ("140", "", "time"),                # no exit_reason to go by: 140 is the run limit
    ("130", "TERM_MEMLIMIT", "mem"),    # the keyword decides, whatever the signal
    ("140", "TERM_OWNER: job killed by owner", None),  # another reason: not the run limit
    ("152", "TERM_CPULIMIT: job killed after reaching LSF CPU usage limit", None),
    ("1", "", None),
])
def test_exit_reason_says_which_request_ran_out(exit_code, exit_reason, exceeded):
    assert lsf.classify("EXIT", exit_code, "", exit_reason).exceeded == exceeded


def test_a_memory_kill_read_from_bjobs_json_names_its_reason():
    jobs = [{"job_id": "7", "chunks": [0, 1], "array": True, "offset": -1}]
    text = json.dumps({"COMMAND": "bjobs", "JOBS": 2, "RECORDS": [
        {"JOBID": "7", "STAT": "EXIT", "JOB_NAME": "pp[1]", "EXIT_CODE": "137",
         "EXIT_REASON": MEMLIMIT, "PEND_REASON": ""},
        {"JOBID": "7", "STAT": "EXIT", "JOB_NAME": "pp[2]", "EXIT_CODE": "140",
         "PEND_REASON": ""}]})  # an LSF that leaves the field out: exit 140 still counts
    statuses = lsf.parse_bjobs_json(text, jobs)
    assert statuses[("7", 0)].exceeded == "mem" and MEMLIMIT in statuses[("7", 0)].reason
    assert statuses[("7", 1)].exceeded == "time"


def test_memory_kill_fails_at_once_naming_the_option(dummy_lsf):
    dummy_lsf.inject_oom(count=1)  # EXIT 137, TERM_MEMLIMIT
    with pytest.raises(TaskLostError) as lost:
        pp.LsfPool(memory="1GB", **FAST).map(sleep_then_return, [0], chunksize=1)
    message = str(lost.value)
    assert "killed at its memory request and not resubmitted: raise memory=" in message
    assert "TERM_MEMLIMIT" in message and "asked for memory=1GB" in message
    assert len(dummy_lsf.submissions) == 1


def test_memory_kill_is_resubmitted_with_the_doubled_limit(dummy_lsf):
    dummy_lsf.inject_oom(count=1)
    pool = pp.LsfPool(memory="1GB", retry_resources={"mem": 2.0}, **FAST)
    assert pool.map(sleep_then_return, [0], chunksize=1) == [0]
    assert flag_values(dummy_lsf, "-M") == ["1GB", "2GB"]


def test_an_lsf_without_exit_reason_is_asked_without_it_and_140_still_counts(dummy_lsf, tmp_path):
    """An LSF before 10.1 (no -json) that does not know exit_reason either: bjobs refuses the
    field, the pool asks without it from then on, and tells the run limit by exit code 140."""
    shim, calls = tmp_path / "bjobs", tmp_path / "bjobs.calls"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in *exit_reason*)\n'
                    '  echo "exit_reason: Illegal field name" >&2; exit 255;;\nesac\n'
                    'exec bjobs "$@"\n')
    shim.chmod(0o755)
    dummy_lsf.set_limits(lsf_json=False)
    dummy_lsf.inject_timeout(0.5, count=1)  # exit 140 after 0.5 s, once
    pool = pp.LsfPool(walltime="1", retry_resources={"time": 2.0}, bjobs_path=str(shim), **FAST)
    assert pool.map(sleep_then_return, [2], chunksize=1) == [2]
    assert flag_values(dummy_lsf, "-W") == ["1", "0:02"]
    asked = calls.read_text().splitlines()
    assert sum("exit_reason" in argv for argv in asked) == 1  # refused once, never asked again
    assert sum("-noheader" in argv and "exit_code" in argv for argv in asked) >= 2
