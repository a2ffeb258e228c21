"""Site profiles (poolparty_raster.profiles) and AutoPool (poolparty_raster.autopool): a
profile makes its backend's pool with its options, maps run through it, AutoPool picks the
profile, else the scheduler on PATH, else LocalPool, and every bad input names the file, the
line and the valid choices."""
from __future__ import annotations

import os
import textwrap

import pytest

from poolparty_raster.autopool import AutoPool, find_schedulers
from poolparty_raster.pools import LocalPool, PbsPool, SgePool, SlurmArrayPool, SlurmPool
from poolparty_raster.pools.base import Pool
from poolparty_raster.registry import BACKENDS
from poolparty_raster.profiles import (CONFIG_VARIABLE, PROFILE_VARIABLE, ProfileError,
                                       load_profile, pool_from_profile, profile_names)

SCHEDULER_VARIABLES = ("SLURM_CLUSTER_NAME", "SLURM_CONF", "SLURM_JOB_ID", "SGE_ROOT", "SGE_CELL",
                       "PBS_SERVER", "PBS_EXEC", "PBS_HOME", "PBS_CONF_FILE", "PBS_JOBID")


def square(x):
    return x * x


@pytest.fixture(autouse=True)
def _no_profile_or_scheduler_environment(monkeypatch):
    """What the machine running the tests sets (a real cluster's variables, a user's profile)
    must not decide what these tests see."""
    for variable in (PROFILE_VARIABLE, CONFIG_VARIABLE, *SCHEDULER_VARIABLES):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Write the profiles file (dedented) and point $POOLPARTY_RASTER_CONFIG at it."""
    path = tmp_path / "config.toml"
    monkeypatch.setenv(CONFIG_VARIABLE, str(path))

    def write(text: str):
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path
    return write


def only_on_path(monkeypatch, *directories):
    """PATH holds nothing but these directories: the real SLURM and Grid Engine of the test
    machine (in /usr/bin) are out of sight."""
    monkeypatch.setenv("PATH", os.pathsep.join(str(d) for d in directories))


def work_dirs_in(root):
    return [name for name in os.listdir(root) if name.startswith("poolparty_raster.")]


# -- profiles make their backend's pool -------------------------------------------------------

CLUSTER_PROFILES = {
    "dummy_slurm": ('backend = "slurm"\npartition = "debug"\ntime = "0:10:00"',
                    SlurmArrayPool, ["--partition=debug", "--time=0:10:00"]),
    "dummy_sge": ('backend = "sge"\nqueue_name = "all.q"\nresources = ["h_rt=600"]',
                  SgePool, ["all.q", "h_rt=600"]),
    "dummy_pbs": ('backend = "pbs"\nqueue = "workq"\nwalltime = "0:10:00"',
                  PbsPool, ["workq", "walltime=0:10:00"]),
}


@pytest.mark.parametrize("dummy", sorted(CLUSTER_PROFILES))
def test_cluster_profile_submits_with_its_options_under_its_work_dir_root(
        dummy, request, config, tmp_path):
    queue = request.getfixturevalue(dummy)
    options, pool_class, expected_arguments = CLUSTER_PROFILES[dummy]
    root = tmp_path / "site_root"
    root.mkdir()
    config(f"[profiles.site]\n{options}\nwork_dir_root = '{root}'\nkeep_work_dir = true\n")
    pool = pool_from_profile("site")
    assert type(pool) is pool_class
    assert pool.map(square, range(6)) == [x * x for x in range(6)]
    argv = [argument for submission in queue.submissions for argument in submission["argv"]]
    for expected in expected_arguments:
        assert any(expected in argument for argument in argv), (expected, argv)
    assert len(work_dirs_in(root)) == 1


def greeting(_):
    return os.environ.get("POOLPARTY_TEST_GREETING")


def test_a_profiles_setup_lines_run_on_the_node(dummy_slurm, config):
    config("""
        [profiles.site]
        backend = "slurm"
        setup = ["export POOLPARTY_TEST_GREETING=from-the-profile"]
        polling_interval = 0.3
        progress = false
    """)
    assert pool_from_profile("site").map(greeting, range(2)) == ["from-the-profile"] * 2


def test_a_profile_for_a_local_pool_refuses_setup_lines(config):
    config("""
        [profiles.laptop]
        backend = "local"
        setup = ["module load gdal"]
    """)
    with pytest.raises(ProfileError, match="setup"):
        pool_from_profile("laptop")


def test_local_profile_runs_a_map_in_its_work_dir_root_with_variables_expanded(
        config, tmp_path, monkeypatch):
    monkeypatch.setenv("PP_TEST_SCRATCH", str(tmp_path))
    (tmp_path / "pp").mkdir()
    config("""
        [profiles.laptop]
        backend = "local"
        num_workers = 2
        keep_work_dir = true
        work_dir_root = "$PP_TEST_SCRATCH/pp"
        """)
    pool = pool_from_profile("laptop")
    assert isinstance(pool, LocalPool) and pool.parallelism == 2
    assert pool.work_dir_parent == str(tmp_path / "pp")
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert len(work_dirs_in(tmp_path / "pp")) == 1


def test_backend_may_name_a_pool_class(config):
    config("""
        [profiles.jobs]
        backend = "SlurmPool"
        partition = "debug"
        """)
    assert type(pool_from_profile("jobs")) is SlurmPool


def test_overrides_win_and_a_misspelt_override_suggests_the_option(config):
    config("""
        [profiles.laptop]
        backend = "local"
        num_workers = 2
        """)
    assert pool_from_profile("laptop", num_workers=3).parallelism == 3
    with pytest.raises(TypeError, match="'num_worker' \\(did you mean 'num_workers'\\?\\)"):
        pool_from_profile("laptop", num_worker=3)


def test_the_environment_names_the_default_profile(config, monkeypatch):
    config("""
        [profiles.laptop]
        backend = "local"
        [profiles.cluster]
        backend = "slurm"
        """)
    monkeypatch.setenv(PROFILE_VARIABLE, "cluster")
    assert type(pool_from_profile()) is SlurmArrayPool
    assert profile_names() == ["cluster", "laptop"]


def test_the_file_defaults_to_the_users_config_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = tmp_path / ".config" / "poolparty_raster"
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text('[profiles.home]\nbackend = "local"\n')
    assert load_profile("home").path == directory / "config.toml"


def test_only_the_profile_asked_for_is_checked(config):
    """A broken profile (or one for a backend this machine lacks) leaves the others usable."""
    config("""
        [profiles.laptop]
        backend = "local"
        [profiles.broken]
        backend = "slurmm"
        """)
    assert isinstance(pool_from_profile("laptop"), LocalPool)


# -- bad input: the file, the line, the valid choices -------------------------------------------

BAD_FILES = {
    "syntax error": ("""
        [profiles.gadi]
        backend = "pbs"
        queue "normal"
        """, "gadi", ["not valid TOML", "line 3"]),
    "unknown backend": ("""
        [profiles.laptop]
        backend = "local"

        [profiles.gadi]
        queue = "normal"
        backend = "pbss"
        """, "gadi", ["line 6", "unknown backend 'pbss'", "did you mean 'pbs'?",
                      ", ".join(b.name for b in BACKENDS) + ", LocalPool, SlurmArrayPool"]),
    "unknown option": ("""
        [profiles.gadi]
        backend = "pbs"
        queue = "normal"
        wall_time = "1:00:00"
        """, "gadi", ["line 4", "PbsPool has no option 'wall_time'", "did you mean 'walltime'?",
                      "its options: account, array,", "work_dir_root"]),
    "unknown option in an inline table": ("""
        [profiles]
        laptop = { backend = "local" }
        hpc = { backend = "slurm", partiton = "short" }
        """, "hpc", ["line 3", "no option 'partiton'", "did you mean 'partition'?"]),
    "backend not a string": ("""
        [profiles.gadi]
        backend = ["pbs"]
        """, "gadi", ["line 2", "unknown backend ['pbs']", "one of: local, slurm"]),
    "no backend": ("""
        [profiles.laptop]
        backend = "local"
        [profiles.gadi]
        queue = "normal"
        """, "gadi", ["line 3", "no 'backend'", "local, slurm, sge, pbs"]),
    "a value the pool refuses": ("""
        [profiles.laptop]
        backend = "local"
        mode = "batch"
        """, "laptop", ["profile 'laptop' (LocalPool)", "mode must be 'array' or 'workers'"]),
    "work_dir_root not a string": ("""
        [profiles.laptop]
        backend = "local"
        work_dir_root = 3
        """, "laptop", ["line 3", "'work_dir_root' must be a string"]),
    "unknown top-level key": ("""
        [profiles.laptop]
        backend = "local"
        [profile.gadi]
        backend = "pbs"
        """, "laptop", ["line 3", "unknown top-level key 'profile'", "did you mean 'profiles'?"]),
    "no such profile": ("""
        [profiles.gadi]
        backend = "pbs"
        [profiles.laptop]
        backend = "local"
        """, "gadii", ["no profile 'gadii'", "did you mean 'gadi'?", "profiles: gadi, laptop"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_profile_file_names_the_file_the_line_and_the_choices(case, config):
    text, name, expected = BAD_FILES[case]
    path = config(text)
    with pytest.raises(ProfileError) as raised:
        pool_from_profile(name)
    message = str(raised.value)
    assert message.startswith(str(path)), message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_a_missing_file_names_it_and_the_variable(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv(CONFIG_VARIABLE, str(missing))
    with pytest.raises(ProfileError, match=f"{missing}: no such file.*{CONFIG_VARIABLE}"):
        pool_from_profile("gadi")
    assert profile_names() == []


def test_no_profile_named_says_how_to_name_one(config):
    config('[profiles.laptop]\nbackend = "local"\n')
    with pytest.raises(ProfileError, match=f"no profile named: .*{PROFILE_VARIABLE}"):
        pool_from_profile()


# -- AutoPool ---------------------------------------------------------------------------------

def test_autopool_uses_the_profile_the_environment_names(config, monkeypatch, capsys):
    config("""
        [profiles.laptop]
        backend = "local"
        num_workers = 2
        """)
    monkeypatch.setenv(PROFILE_VARIABLE, "laptop")
    pool = AutoPool(num_simultaneously_running_tasks=1)
    assert isinstance(pool, LocalPool) and pool.parallelism == 1
    assert pool.auto_choice.profile == "laptop"
    assert "AutoPool: LocalPool (profile 'laptop'" in capsys.readouterr().err
    assert pool.map(square, [3]) == [9]


def test_autopool_never_falls_back_from_a_profile_it_was_asked_for(
        config, monkeypatch, tmp_path):
    config('[profiles.laptop]\nbackend = "local"\n')
    only_on_path(monkeypatch, tmp_path)  # nothing found either: still an error
    monkeypatch.setenv(PROFILE_VARIABLE, "gadi")
    with pytest.raises(ProfileError, match="no profile 'gadi'"):
        AutoPool()
    monkeypatch.setenv(CONFIG_VARIABLE, str(tmp_path / "missing.toml"))
    with pytest.raises(ProfileError, match="no such file"):
        AutoPool()


@pytest.mark.parametrize("dummy, pool_class, named", [
    ("dummy_slurm", SlurmArrayPool, "SLURM found: sbatch on PATH"),
    ("dummy_sge", SgePool, "Grid Engine found: qsub at"),
    ("dummy_pbs", PbsPool, "PBS found: qsub at"),
])
def test_autopool_finds_each_scheduler_on_path(dummy, pool_class, named, request, monkeypatch,
                                               capsys):
    queue = request.getfixturevalue(dummy)
    only_on_path(monkeypatch, queue.directory)
    pool = AutoPool(keep_work_dir=False)
    assert type(pool) is pool_class
    assert pool.auto_choice.profile is None and named in pool.auto_choice.reason
    assert f"AutoPool: {pool_class.__name__} ({named}" in capsys.readouterr().err


def test_autopool_runs_a_map_on_the_scheduler_it_found(dummy_pbs, monkeypatch):
    only_on_path(monkeypatch, dummy_pbs.directory)
    assert AutoPool().map(square, range(4)) == [0, 1, 4, 9]
    assert dummy_pbs.submissions


def test_autopool_without_a_scheduler_is_a_local_pool(monkeypatch, tmp_path, capsys):
    only_on_path(monkeypatch, tmp_path)
    assert find_schedulers() == []
    pool = AutoPool(num_simultaneously_running_tasks=2)
    assert isinstance(pool, LocalPool) and pool.parallelism == 2
    assert "no SLURM, Grid Engine or PBS found" in pool.auto_choice.reason
    assert "AutoPool: LocalPool (no SLURM" in capsys.readouterr().err


def test_the_first_qsub_on_path_decides_between_grid_engine_and_pbs(
        dummy_sge, dummy_pbs, monkeypatch):
    only_on_path(monkeypatch, dummy_pbs.directory, dummy_sge.directory)
    assert [f.backend for f in find_schedulers()] == ["pbs"]
    only_on_path(monkeypatch, dummy_sge.directory, dummy_pbs.directory)
    assert [f.backend for f in find_schedulers()] == ["sge"]


def test_with_slurm_and_pbs_the_scheduler_whose_environment_is_set_wins(
        dummy_slurm, dummy_pbs, monkeypatch):
    only_on_path(monkeypatch, dummy_slurm.directory, dummy_pbs.directory)
    undecided = AutoPool()
    assert type(undecided) is SlurmArrayPool  # neither set: SLURM, saying what else is there
    assert f"also found PBS: set ${PROFILE_VARIABLE}" in undecided.auto_choice.reason
    monkeypatch.setenv("PBS_SERVER", "gadi-pbs")
    decided = AutoPool()
    assert type(decided) is PbsPool
    assert "PBS_SERVER set" in decided.auto_choice.reason


def test_a_pool_class_makes_itself_from_a_profile_of_its_kind_only(config):
    config("""
        [profiles.laptop]
        backend = "local"
        processes = 2
        """)
    assert isinstance(Pool.from_profile("laptop"), LocalPool)
    assert LocalPool.from_profile("laptop", processes=3).parallelism == 3
    with pytest.raises(ProfileError, match="profile 'laptop' makes a LocalPool, not a PbsPool"):
        PbsPool.from_profile("laptop")
