"""A map's progress where people run it: a bar labelled with the function's name and the
scheduler's counts in a terminal, a summary line a minute in a log, nothing when asked."""
from __future__ import annotations

import functools
import io
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import progress as progress_module
from poolparty_raster.progress import Progress, function_label
from poolparty_raster.schedulers.base import TaskState, TaskStatus

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending(reason: str = "") -> TaskStatus:
    return TaskStatus(TaskState.PENDING, reason)


RUNNING = TaskStatus(TaskState.RUNNING)


def square(x):
    return x * x


def test_a_log_gets_a_summary_line_at_most_once_a_minute_and_one_at_the_end():
    log, clock = io.StringIO(), Clock()
    progress = Progress(10, None, "square", stream=log, clock=clock)
    progress.advance(2)
    clock.now += 59
    progress.note_queue([RUNNING] * 3 + [pending("Priority")], "chunks")
    assert log.getvalue() == ""
    clock.now += 1
    progress.advance(1)
    clock.now += 30
    progress.advance(1)  # the same minute: no second line
    clock.now += 45
    progress.advance(6)  # every task done: the end's line comes next
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines == ["poolparty_raster square: 3/10 tasks done, queued 1, running 3, 1m00s",
                     "poolparty_raster square: 10/10 tasks done, 2m15s"]
    assert "\r" not in log.getvalue()


def test_a_queued_map_says_why_the_scheduler_holds_it_while_nothing_runs():
    log, clock = io.StringIO(), Clock()
    progress = Progress(8, None, "square", stream=log, clock=clock)
    progress.note_queue([pending("Resources"), pending("Priority"), pending("Priority")], "chunks")
    assert progress.counts() == {"queued": 3, "running": 0, "waiting for": "Priority"}
    progress.note_queue([pending("Priority"), RUNNING], "chunks")
    assert progress.counts() == {"queued": 1, "running": 1}  # running: not waiting any more
    progress.note_queue([pending("None"), pending("")], "workers")  # SLURM's "None" says nothing
    assert progress.counts() == {"workers queued": 2, "workers running": 0}


def test_a_terminal_gets_a_bar_labelled_with_the_function_and_the_counts():
    terminal = Terminal()
    progress = Progress(4, None, "square", stream=terminal, clock=Clock())
    progress.note_queue([pending("Priority")] * 2, "chunks")
    progress.advance(4)
    progress.close()
    shown = terminal.getvalue()
    assert "square: 100%" in shown and "4/4" in shown
    assert "queued=2" in shown and "waiting for=Priority" in shown
    assert "poolparty_raster square:" not in shown  # no summary line under a bar


def test_progress_true_draws_the_bar_into_a_log_too():
    log = io.StringIO()
    progress = Progress(3, True, "square", stream=log, clock=Clock())
    progress.advance(3)
    progress.close()
    assert "square: 100%" in log.getvalue()


def test_progress_false_writes_nothing_at_all():
    for stream in (io.StringIO(), Terminal()):
        clock = Clock()
        progress = Progress(3, False, "square", stream=stream, clock=clock)
        progress.note_queue([pending("Priority")], "chunks")
        clock.now += 3600
        progress.advance(3)
        progress.close()
        assert stream.getvalue() == ""


def test_a_notebook_gets_tqdm_autos_widget_though_stderr_is_no_terminal(monkeypatch):
    made = []

    class Widget(progress_module.auto_tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)
    Widget.__module__ = "tqdm.notebook"  # what tqdm.auto's class derives from in Jupyter
    monkeypatch.setattr(progress_module, "auto_tqdm", Widget)
    log = io.StringIO()
    progress = Progress(2, None, "square", stream=log, clock=Clock())
    progress.advance(2)
    progress.close()
    assert made and made[0]["disable"] is False and made[0]["desc"] == "square"
    assert "poolparty_raster square:" not in log.getvalue()  # the widget, no summary lines


def test_the_label_is_the_mapped_functions_name_through_the_packages_wrappers():
    assert function_label(square) == "square"
    assert function_label(functools.partial(square)) == "square"
    assert function_label(lambda x: x).endswith("<locals>.<lambda>")

    class Model:
        func = square  # a user's own object is named as itself, whatever it holds

        def __call__(self, x):
            return x
    assert function_label(Model()).endswith("<locals>.Model")


def test_a_maps_summary_line_names_its_function_through_starmap_and_the_initializer(
        monkeypatch, capsys):
    with pp.LocalPool(2, mode="array", polling_interval=0.2, initializer=print,
                      initargs=("set up",)) as pool:
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
    err = capsys.readouterr().err  # pytest's capture is no terminal: the log's one line
    assert err.startswith("poolparty_raster pow: 2/2 tasks done")
    assert len(err.splitlines()) == 1


def test_an_executors_and_joblibs_batches_are_named_after_the_users_functions(capsys):
    joblib = pytest.importorskip("joblib", reason="joblib is an optional extra")
    import poolparty_raster.joblib_backend  # noqa: F401  (registers the "poolparty" backend)
    with pp.LocalPool(2, mode="array", polling_interval=0.2) as pool:
        with pool.executor() as executor, executor.batch():
            mixed = [executor.submit(pow, 2, 3), executor.submit(abs, -1)]
        assert [f.result() for f in mixed] == [8, 1]
        with joblib.parallel_config(backend="poolparty", pool=pool):
            assert joblib.Parallel(batch_size=2)(joblib.delayed(pow)(x, 2) for x in range(4)) \
                == [0, 1, 4, 9]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "poolparty_raster 2 functions", "poolparty_raster pow"]


def waits_for(path):
    """Runs until the test creates ``path`` (once the progress has shown this task running)."""
    import os
    import time
    while not os.path.exists(path):
        time.sleep(0.01)
    return path


def test_a_map_shows_the_schedulers_queued_and_running_counts_from_its_polls(
        tmp_path, monkeypatch):
    release = tmp_path / "release"
    seen = []
    note_queue = Progress.note_queue

    def watched(self, statuses, members):
        note_queue(self, statuses, members)
        seen.append(dict(self.counts()))
        if self.running:
            release.touch()  # the task may end now that it was seen running
    monkeypatch.setattr(Progress, "note_queue", watched)
    with pp.LocalPool(1, mode="array", polling_interval=0.2, progress=False) as pool:
        assert pool.map(waits_for, [str(release)] * 3, chunksize=1) == [str(release)] * 3
    assert {"queued": 2, "running": 1} in seen
