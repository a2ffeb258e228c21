"""Behaviour seen from a user's own script: functions from __main__ and from a module beside the
script, and Ctrl-C (or SIGTERM, as a scheduler ends the driver's own job, or SIGHUP, as a
dropped ssh session ends it) cancelling the map's jobs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from workdirlog import log_events

SCRIPT = textwrap.dedent("""
    import sys
    import poolparty_raster as pp
    import helper

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        with {pool} as pool:
            print(pool.map(double, range(4)), pool.map(helper.triple, range(3)))
""")

SLEEPER = textwrap.dedent("""
    import os, sys, time
    import poolparty_raster as pp

    def sleep_long(x):
        open(os.path.join({pids!r}, str(os.getpid())), "w").close()
        time.sleep(120)

    if __name__ == "__main__":
        pool = {pool}
        pool.map(sleep_long, range(2), chunksize=1)
""")


def pool_expression(backend: str) -> str:
    return {"local": "pp.LocalPool(2)", "dummy_slurm": "pp.SlurmArrayPool(polling_interval=0.5)",
            "real_slurm": "pp.SlurmArrayPool(polling_interval=0.5)",
            "real_sge": "pp.SgePool(polling_interval=0.5)"}[backend]


@pytest.fixture(params=["local", "dummy_slurm", "real_slurm", "real_sge"])
def script_backend(request):
    if request.param != "local":
        request.getfixturevalue(request.param)  # puts the dummy scheduler on PATH
    return request.param


def test_functions_from_main_and_from_a_module_beside_the_script(tmp_path, script_backend):
    (tmp_path / "helper.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / "main.py").write_text(SCRIPT.format(pool=pool_expression(script_backend)))
    done = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 2, 4, 6] [0, 3, 6]"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_or_sigterm_cancels_the_maps_jobs(tmp_path, script_backend, how):
    if how != "SIGINT" and script_backend.startswith("real"):
        pytest.skip("the driver's signal handling is the same whatever the scheduler; "
                    "SIGINT covers the real schedulers' cancel commands")
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "sleeper.py").write_text(SLEEPER.format(pids=str(pids), pool=pool_expression(script_backend)))
    # SIGINT and SIGHUP as a login shell leaves them to its foreground job (not ignored, as
    # under nohup, or in a job a non-interactive shell put in the background: this suite's)
    driver = subprocess.Popen([sys.executable, "sleeper.py"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_as_a_terminals_foreground_job)
    deadline = time.monotonic() + 60
    while len(os.listdir(pids)) < 2:
        assert time.monotonic() < deadline, "the tasks never started"
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.05)
    driver.send_signal(getattr(signal, how))
    _, stderr = driver.communicate(timeout=60)
    if how == "SIGINT":
        assert "KeyboardInterrupt" in stderr
    else:
        assert driver.returncode == 128 + getattr(signal, how), stderr
    task_pids = [int(p) for p in os.listdir(pids)]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in task_pids):
        assert time.monotonic() < deadline, "tasks still run after Ctrl-C"
        time.sleep(0.05)
    (work_dir,) = (tmp_path / "work").iterdir()
    events = [e["event"] for e in log_events(work_dir)]
    assert "cancelled" in events


def _as_a_terminals_foreground_job() -> None:
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_signal_the_program_handles_or_ignores_itself_is_left_so_during_a_map():
    """Under nohup SIGHUP is ignored, and must stay so (the driver outlives the session);
    a SIGTERM handler of the program's own keeps working. Unset ones are the map's while it
    runs, and the default again after."""
    import poolparty_raster as pp
    own_calls = []

    def own(signum, frame):
        own_calls.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, own)
        results = pp.LocalPool(2, progress=False).imap(abs, range(-4, 0), chunksize=1)
        first = next(results)  # the map runs
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is own
        os.kill(os.getpid(), signal.SIGHUP)   # ignored
        os.kill(os.getpid(), signal.SIGTERM)  # the program's own handler runs, nothing exits
        assert [first, *results] == [4, 3, 2, 1] and own_calls == [signal.SIGTERM]
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        results = pp.LocalPool(2, progress=False).imap(abs, range(-4, 0), chunksize=1)
        next(results)
        installed = {signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
        assert signal.SIG_DFL not in installed and len(installed) == 1  # the map's, for both
        assert list(results) == [3, 2, 1]
        assert signal.getsignal(signal.SIGHUP) is signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
