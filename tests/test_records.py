"""Per-chunk records (records.py): each chunk's result carries where and how it ran, with the
scheduler's own job id and array index, and the report numbers its attempts."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli
from poolparty_raster.records import ChunkClock, process_identity, read_record, scheduler_identity
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MB = 1_000_000


@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_JOB_ID": "4712", "SLURM_ARRAY_JOB_ID": "4700", "SLURM_ARRAY_TASK_ID": "12"},
     {"scheduler": "slurm", "job_id": "4700", "array_index": "12", "element_id": "4712"}),
    ({"SLURM_JOB_ID": "4712"},
     {"scheduler": "slurm", "job_id": "4712", "array_index": None, "element_id": "4712"}),
    ({"JOB_ID": "88", "SGE_TASK_ID": "3", "SGE_ROOT": "/var/lib/gridengine"},
     {"scheduler": "sge", "job_id": "88", "array_index": "3", "element_id": None}),
    ({"JOB_ID": "88", "SGE_TASK_ID": "undefined"},
     {"scheduler": "sge", "job_id": "88", "array_index": None, "element_id": None}),
    ({"PBS_JOBID": "123[4].server", "PBS_ARRAY_INDEX": "4"},
     {"scheduler": "pbs", "job_id": "123[4].server", "array_index": "4", "element_id": None}),
    ({"JOB_ID": "not grid engine's"},
     {"scheduler": "local", "job_id": None, "array_index": None, "element_id": None}),
])
def test_the_job_is_named_as_its_scheduler_names_it(environ, expected):
    assert scheduler_identity(environ) == expected


def test_a_result_without_a_record_or_with_a_torn_one_has_none():
    clock = ChunkClock(process_identity({}, worker=None))
    clock.start()
    result = pickle.dumps(([b"x"], []), protocol=5)
    whole = result + clock.finish(0)
    assert pickle.loads(whole) == ([b"x"], [])  # every reader of results is unchanged
    assert read_record(whole)["exit"] == "returned"
    assert read_record(result) is None  # a result of a version before records
    assert read_record(whole[:-1]) is None and read_record(whole[:len(result) + 3]) is None
    clock.close()


def sleeps_allocates_or_raises(x):
    if x == 3:
        raise ValueError("three")
    if x == 1:
        block = bytearray(200 * MB)
        block[::4096] = b"x" * len(block[::4096])  # touched: resident
        del block
    if x == 2:
        end = time.process_time() + 0.3
        while time.process_time() < end:  # busy: CPU time
            pass
    time.sleep(0.4 if x == 4 else 0.01)
    return x


@pytest.mark.parametrize("mode", ["workers", "array"])
def test_each_chunk_records_its_host_process_times_cpu_memory_and_exit(tmp_path, mode):
    work_dir = str(tmp_path / "w")
    with pytest.raises(ValueError):
        pp.LocalPool(2, work_dir=work_dir, mode=mode, progress=False).map(
            sleeps_allocates_or_raises, range(6), chunksize=1)
    report = cli.report(work_dir)
    runs = {r["chunk"]: r for r in report["runs"]}
    assert sorted(runs) == list(range(6)) and report["chunks_without_record"] == 0
    assert {r["host"] for r in runs.values()} == {socket.gethostname()}
    assert all(r["scheduler"] == "local" and r["job_id"] is None for r in runs.values())
    assert all(r["attempt"] == 1 for r in runs.values())
    prepared = report["settings"]["prepared"]
    assert all(prepared <= r["start"] <= r["end"] <= time.time() for r in runs.values())
    assert runs[4]["seconds"] >= 0.4 and runs[2]["cpu"] >= 0.3 > runs[4]["cpu"]
    # The chunk that held 200 MB reports it; in workers mode the process's next chunks do not
    # (their peak is their own).
    assert runs[1]["peak_rss"] >= 200 * MB
    assert all(r["peak_rss"] < 150 * MB for c, r in runs.items() if c != 1)
    assert runs[3]["exit"] == "raised" and {r["exit"] for c, r in runs.items() if c != 3} == {"returned"}
    pids = {r["pid"] for r in runs.values()}
    if mode == "array":
        assert len(pids) == 6 and all(r["worker"] is None for r in runs.values())
    else:
        assert len(pids) <= 2 and {r["worker"] for r in runs.values()} <= {0, 1}


DIED = "died-once"


def dies_once_on_two(x):
    if x == 2 and not os.path.exists(DIED):
        open(DIED, "w").close()
        os._exit(9)
    return x


@pytest.mark.parametrize("mode", ["workers", "array"])
def test_a_chunk_that_ran_again_after_a_death_is_attempt_two(tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)  # the workers' working directory: where DIED goes
    work_dir = str(tmp_path / "w")
    pp.LocalPool(2, work_dir=work_dir, mode=mode, keep_work_dir=True, progress=False,
                 polling_interval=0.2).map(dies_once_on_two, range(4), chunksize=1)
    report = cli.report(work_dir)
    assert {r["chunk"]: r["attempt"] for r in report["runs"]} == {0: 1, 1: 1, 2: 2, 3: 1}
    assert [d["event"] for d in report["deaths"]] == ["lost"]
    assert report["deaths"][0]["chunk"] == 2


def _records_name_the_jobs(work_dir: str) -> list[dict]:
    """The records, checked against the jobs the driver recorded: each names one of them, and
    (array mode) its array index is its chunk's place in that job."""
    runs = cli.report(work_dir)["runs"]
    jobs = {job["job_id"]: job for job in WorkDir(work_dir).read_jobs()}
    for run in runs:
        assert run["job_id"] in jobs, (run, list(jobs))
        job = jobs[run["job_id"]]
        assert run["chunk"] in job["chunks"]
    return runs


def test_records_on_the_dummy_slurm_name_its_jobs(dummy_slurm, tmp_path):
    work_dir = str(tmp_path / "w")
    pp.SlurmArrayPool(work_dir=work_dir, keep_work_dir=True, progress=False).map(
        abs, range(3), chunksize=1)
    runs = _records_name_the_jobs(work_dir)
    assert all(r["scheduler"] == "slurm" for r in runs)
    assert len({r["array_index"] for r in runs}) == 3


def _real_map(pool: pp.Pool, work_dir: str) -> list[dict]:
    assert pool.map(abs, range(-3, 0), chunksize=1) == [3, 2, 1]
    return _records_name_the_jobs(work_dir)


def test_records_on_the_real_slurm_are_slurms_own(real_slurm, tmp_path):
    work_dir = str(tmp_path / "w")
    runs = _real_map(pp.SlurmArrayPool(work_dir=work_dir, keep_work_dir=True, progress=False,
                                       polling_interval=0.2), work_dir)
    assert len({r["array_index"] for r in runs}) == 3
    for run in runs:
        assert run["scheduler"] == "slurm"
        element = f"{run['job_id']}_{run['array_index']}"
        shown = subprocess.run(["scontrol", "show", "job", element, "--oneliner"],
                               capture_output=True, text=True).stdout
        sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", element,
                                "--format=JobID,NodeList"], capture_output=True, text=True).stdout
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        # scontrol forgets a job after MinJobAge; sacct keeps it where accounting runs.
        nodes = ({fields["BatchHost"], fields["JobId"]} if fields else
                 {part for line in sacct.splitlines() for part in line.split("|")})
        assert nodes, f"neither scontrol nor sacct knows job {element}"
        assert run["host"] in nodes or run["host"].split(".")[0] in nodes
        assert run["element_id"] in nodes or element in nodes


def _eventually(ask, failure: str, timeout: float = 60):
    """What ``ask`` returns once it returns something, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (answer := ask()):
        assert time.monotonic() < deadline, failure
        time.sleep(0.5)
    return answer


def _qacct(job_id: str, task: str) -> dict[str, str]:
    accounted = subprocess.run(["qacct", "-j", job_id, "-t", task], capture_output=True,
                               text=True).stdout
    return dict(line.split(None, 1) for line in accounted.splitlines() if " " in line)


def test_records_on_the_real_sge_are_grid_engines_own(real_sge, tmp_path):
    work_dir = str(tmp_path / "w")
    runs = _real_map(pp.SgePool(work_dir=work_dir, keep_work_dir=True, progress=False,
                                polling_interval=0.2), work_dir)
    assert sorted(int(r["array_index"]) for r in runs) == [1, 2, 3]  # qsub -t counts from 1
    for run in runs:
        assert run["scheduler"] == "sge"
        # A task's accounting is written as its job ends, after its result is there.
        fields = _eventually(lambda: _qacct(run["job_id"], run["array_index"]),
                             f"qacct knows nothing of job {run['job_id']}.{run['array_index']}")
        assert fields["hostname"].strip().split(".")[0] == run["host"].split(".")[0]
        assert fields["jobnumber"].strip() == run["job_id"]
        assert fields["taskid"].strip() == run["array_index"]
