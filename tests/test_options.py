"""A pool's options, declared once (its scheduler's keywords, settings.py for every pool), are
what its constructor takes, what help() and an editor show, and what a misspelling is checked
against."""
from __future__ import annotations

import dataclasses
import inspect
import pydoc
import sys
import threading
from pathlib import Path

import pytest

import poolparty_raster as pp
from poolparty_raster.registry import BACKENDS
from poolparty_raster.settings import MapSettings, option_fields

ROOT = Path(__file__).resolve().parent.parent
POOLS = [getattr(pp, name) for backend in BACKENDS for name in backend.pool_classes]
COMMON = [f.name for f in option_fields()]


def _scheduler_keywords(pool: type) -> list[str]:
    names = list(inspect.signature(pool._scheduler_class.__init__).parameters)[1:]
    return [n for n in names if n not in pool._fixed_options]


@pytest.mark.parametrize("pool", POOLS, ids=lambda c: c.__name__)
def test_the_signature_holds_the_scheduler_options_then_every_pools(pool):
    """...after the options it also takes by position (LocalPool's are multiprocessing's)."""
    first = list(pool._positional_options)
    rest = [n for n in _scheduler_keywords(pool) + COMMON if n not in first]
    assert list(inspect.signature(pool).parameters) == first + rest


def test_local_pool_takes_multiprocessing_pools_positional_order():
    pool = pp.LocalPool(3, print, ("set up",), 5, mode="array")
    assert pool.parallelism == 3
    assert pool._settings.initializer is print and pool._settings.initargs == ("set up",)
    assert pool._settings.maxtasksperchild == 5
    assert pp.LocalPool(processes=2).parallelism == 2
    assert pp.LocalPool(num_workers=4).parallelism == 4  # its former name
    with pytest.raises(TypeError, match="not both"):
        pp.LocalPool(2, num_workers=2)


@pytest.mark.parametrize("value", [0, -1, 0.5, "12"])
def test_maxtasksperchild_is_refused_as_multiprocessing_refuses_it(value):
    with pytest.raises(ValueError, match="maxtasksperchild"):
        pp.LocalPool(2, maxtasksperchild=value)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        pp.SlurmArrayPool(maxtasksperchild=value)


def test_an_initializer_that_cannot_travel_is_refused_when_the_pool_is_made():
    with pytest.raises(TypeError, match="callable"):
        pp.LocalPool(2, initializer="not a function")
    lock = threading.Lock()
    with pytest.raises(TypeError, match="pickle"):
        pp.LocalPool(2, initializer=print, initargs=(lock,))


def test_types_and_defaults_come_from_the_declarations():
    parameters = inspect.signature(pp.SlurmArrayPool).parameters
    assert parameters["partition"].annotation == str | None
    assert parameters["partition"].default is None
    assert parameters["slurm_call_timeout"].default == 60.0
    assert parameters["polling_interval"].annotation is float
    assert "array" not in parameters  # SlurmArrayPool fixes it; SgePool offers it
    assert inspect.signature(pp.SgePool).parameters["array"].default is True
    assert inspect.signature(pp.AwsBatchPool).parameters["job_queue"].default is inspect.Parameter.empty


@pytest.mark.parametrize("pool", POOLS, ids=lambda c: c.__name__)
def test_help_lists_every_option_on_a_line_with_its_type_and_default(pool):
    text = pydoc.render_doc(pool, renderer=pydoc.plaintext)
    for name, parameter in inspect.signature(pool).parameters.items():
        default = "required" if parameter.default is parameter.empty else f"default {parameter.default!r}"
        lines = [line for line in text.splitlines() if line.strip(" |").startswith(f"{name} (")]
        assert len(lines) == 1 and default in lines[0], (name, lines)


def test_the_fixed_keyword_makes_the_one_job_per_chunk_pool():
    assert pp.SlurmPool()._scheduler.array is False
    assert pp.SlurmArrayPool()._scheduler.array is True


def test_options_reach_the_scheduler_and_the_settings():
    pool = pp.SlurmArrayPool(partition="short", time="1:00:00", max_num_resubmissions=5,
                             filesystem_lag=7.0, mode="workers", max_workers=3)
    assert pool._scheduler.resource_args == ["--partition=short", "--time=1:00:00"]
    assert pool._scheduler.filesystem_lag == 7.0
    assert (pool.mode, pool.max_workers) == ("workers", 3)
    assert pool._settings.max_num_resubmissions == 5


def test_a_misspelt_scheduler_option_names_the_right_one():
    with pytest.raises(TypeError, match=r"'partiton' \(did you mean 'partition'\?\)"):
        pp.SlurmArrayPool(partiton="short")


def test_positional_and_required_options_are_checked_as_python_checks_them():
    assert pp.LocalPool(2)._scheduler.processes == 2  # as multiprocessing.Pool(2)
    with pytest.raises(TypeError):
        pp.LocalPool(2, None, (), None, "spawn")  # start_method is a keyword
    with pytest.raises(TypeError, match="job_queue"):
        pp.AwsBatchPool(job_definition="jd")


def test_bad_values_are_refused_when_the_pool_is_made():
    with pytest.raises(ValueError, match="mode must be"):
        pp.LocalPool(mode="threads")
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        pp.LocalPool(0)
    with pytest.raises(ValueError, match="job_name"):
        pp.EcsPool(container_image="img", subnets=["s"], job_name="two words")


def test_settings_are_frozen_so_no_pool_changes_anothers():
    pool = pp.LocalPool(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool._settings.job_name = "x"  # type: ignore[misc]
    assert MapSettings().job_name == "pp"


def test_the_editor_stub_is_current():
    sys.path.insert(0, str(ROOT / "ci"))
    try:
        import make_stubs
    finally:
        sys.path.remove(str(ROOT / "ci"))
    assert make_stubs.STUB.read_text() == make_stubs.render(), (
        "poolparty_raster/__init__.pyi is out of date: run python ci/make_stubs.py")


@pytest.mark.parametrize("source, expected", [
    ("import poolparty_raster as pp\npp.SlurmArrayPool(part", "partition="),
    ("from poolparty_raster import SlurmPool\nSlurmPool(work_", "work_dir="),
    ("import poolparty_raster as pp\npp.LocalPool(4, mo", "mode="),
    ("import poolparty_raster as pp\npp.SgePool(queue_", "queue_name="),
])
def test_an_editor_completes_options_from_the_source_and_in_a_session(source, expected):
    jedi = pytest.importorskip("jedi", reason="jedi (the test extra) completes as editors do")
    static = jedi.Script(source, project=jedi.Project(str(ROOT))).complete()
    assert expected in [c.name_with_symbols for c in static]  # an editor reading files
    live = jedi.Interpreter(source.splitlines()[-1], [{"pp": pp, **vars(pp)}]).complete()
    assert expected in [c.name_with_symbols for c in live]  # IPython, Jupyter
