"""dummy_queues: fake SLURM, Grid Engine, PBS Pro, IBM Spectrum LSF and HTCondor commands (and, in
``dummy_queues.aws``, ECS and AWS Batch clients) for testing pipelines.

Install the fakes and put them first on PATH; the pools then need no options::

    q = dummy_queues.install("/tmp/bin", scheduler="slurm", slots=4, max_array_size=1001)
    os.environ["PATH"] = "/tmp/bin:" + os.environ["PATH"]

or, in pytest, use the fixtures ``dummy_slurm``, ``dummy_sge``, ``dummy_pbs``, ``dummy_lsf``,
``dummy_htcondor`` (they yield a :class:`DummyQueue` and kill leftover jobs at teardown), or ``dummy_ecs`` and
``dummy_batch`` (see pytest_plugin.py).

Commands: SLURM ``sbatch squeue scancel scontrol``(show config) ``sinfo``
(``-N``, ``-p``, ``-o``); SGE ``qsub qstat``(plain, ``-xml``, ``-j``, ``-g c``) ``qdel qconf``
(``-sconf``); PBS ``qsub qstat``(``-f -F json``; ``-u`` is refused, as it belongs to the
alternate displays) ``qdel qselect``(``-N -u -x -J -T``); LSF ``bsub bjobs``(``-a -d -u -J
-o -json -noheader``) ``bkill badmin``(``showconf mbd``); HTCondor ``condor_submit``(``-terse``,
a submit description file) ``condor_q``(``-json -attributes -constraint -factory``)
``condor_history``(``-json``) ``condor_rm``.  Unknown flags are rejected
(stderr, rc != 0).
State lives in one ``queue_state.json`` beside the scripts (or ``state_path``),
changed only under a file lock and replaced atomically.  Jobs run under detached
runner processes (forked from the command that started them) that record their
own end and start the next pending jobs, so nothing depends on how often
commands are called.  Linux only (/proc is used to check runner liveness).

DummyQueue API:
  jobs(), state(), calls, calls_to(cmd), submissions, wait_idle(timeout)
  inject_error_state(task=None, name=None, count=1, reason=None)
      SLURM: PENDING "launch failed requeued held" (or reason, e.g. "JobHeldAdmin");
      SGE: Eqw; PBS: H; LSF: PSUSP; HTCondor: held.  Stays until cancelled; count decrements per occurrence
      across resubmissions (an element is matched when it would start).
  inject_vanish(task=None, name=None, count=1)
      never runs, writes nothing; SLURM shows NODE_FAIL/NodeDown in --states=all.
  inject_timeout(seconds, task=None, name=None, count=1)
      killed after `seconds` (SLURM TIMEOUT/TimeLimit; SGE gone; PBS Exit_status -29;
      HTCondor held, HoldReasonCode 47).
  inject_oom(task=None, name=None, count=1)
      killed for its memory as it starts (SLURM OUT_OF_MEMORY; PBS Exit_status -27; LSF EXIT
      137, exit_reason TERM_MEMLIMIT; HTCondor held, HoldReasonCode 34); Grid Engine has no memory kill (ValueError).
  inject_slow(seconds, task=None, name=None, count=1)
      runs `seconds` longer than its command takes (a slow node, a straggler).
  inject_command_failure(command, times=1, mode="fail"|"hang"|"garble"|"lose_id"|"late",
                         seconds=60)
      late: the job is accepted, its id lost, and it stays out of sight (listings,
      cancels, scheduling) until the first command `seconds` later.
  set_limits(max_array_size, max_jobs_per_user, max_job_count, min_job_age, slots, kill_wait)
  clear_faults(), kill_all()
Selectors: `task` is the array task id as the scheduler numbers it (SLURM 0-based
as submitted, SGE and LSF 1-based, PBS as given to -J; None matches non-array jobs too),
`name` is the job name or an fnmatch glob; both None = any element.

Choices where no real output was available:
- squeue: non-array job %F = its id, %K = "N/A"; pending elements print the
  array id for %A, started ones their own SLURM_JOB_ID (allocated at start).
  Without -r the pending tasks of an array collapse to `ID_[0-4,7%2]`.
  --time limits are enforced to the second (no rounding up to minutes).
  --open-mode defaults to truncate, as in SLURM.
- SGE: -tc caps running tasks; max_jobs_per_user counts jobs (max_u_jobs),
  SLURM and PBS count elements.  Job exit code 100 puts a task into Eqw.
  Default working dir is $HOME unless -wd/-cwd.
- PBS Pro (no real PBS was available; formats from the PBS Pro docs): jobs
  start in $HOME with PBS_O_WORKDIR set; `qstat -f -F json` omits "Jobs"
  when empty; arrays list the parent `N[]` (state Q/B/F) and, with -t, the
  subjobs (Q/R/H, finished X with -x); -J needs >= 2 indices
  (`qsub: illegal -J value`, rc 2); unknown id rc 153, finished without -x rc 35.
- LSF (no real LSF was available; formats from IBM's LSF 10.1 reference): see
  docs/dummy-queues.md for its choices (jobs start in the submission directory, -env none
  passes a login-like minimum, nothing found exits 255).
- HTCondor (no real HTCondor was available; formats from the HTCondor manual): vanilla
  universe only, one queue statement (``queue N`` or ``queue NAME in (...)``); the
  submit description's macros are expanded in ``environment`` per proc, in ``arguments`` per
  cluster; a job gets only its ``environment`` line and HTCondor's own variables unless
  ``getenv = true``; max_materialize is kept; a proc past its allowed_execute_duration (or
  inject_timeout's limit) is held with HoldReasonCode 47, past allowed_job_duration with 46.
"""
from ._queue import DummyQueue, install

__all__ = ["DummyQueue", "install"]
