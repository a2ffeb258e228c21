"""ConcurrencyStyle(computeWorkerKind=CW_PROFILE): the applier runs on the pool a site profile
describes (docs/profiles.md), the style's own numbers winning over the profile's."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from rasterhelpers import readRaster, writeRaster

from poolparty_raster import applier
from poolparty_raster.profiles import ProfileError

# The module, not the function the package exports under the same name.
apply_module = importlib.import_module("poolparty_raster.applier.apply")

PROFILES = """
[profiles.here]
backend = "local"
num_workers = 1
mode = "array"
progress = false
work_dir_root = "{root}"

[profiles.cluster]
backend = "slurm"
progress = false
polling_interval = 0.2
filesystem_lag = 0.5
work_dir_root = "{root}"

[profiles.gridengine]
backend = "sge"
progress = false
polling_interval = 0.2
filesystem_lag = 0.5
work_dir_root = "{root}"
"""


@pytest.fixture
def profilesFile(tmp_path, monkeypatch):
    """A profiles file of two profiles whose work_dirs go into ``tmp_path/roots``."""
    root = tmp_path / "roots"
    root.mkdir()
    path = tmp_path / "config.toml"
    path.write_text(PROFILES.format(root=root))
    monkeypatch.setenv("POOLPARTY_RASTER_CONFIG", str(path))
    monkeypatch.delenv("POOLPARTY_RASTER_PROFILE", raising=False)
    return root


@pytest.fixture
def poolsMade(monkeypatch):
    """The pools apply makes, recorded."""
    made = []
    real = apply_module.make_pool

    def recording(style, job_name):
        made.append(real(style, job_name))
        return made[-1]
    monkeypatch.setattr(apply_module, "make_pool", recording)
    return made


def double(info, inputs, outputs):
    outputs.out = inputs.img * 2


def runDouble(tmp_path, style):
    array = np.arange(90 * 70, dtype=np.int32).reshape(1, 90, 70)
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array)
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(32, 16)
    controls.setConcurrencyStyle(style)
    applier.apply(double, infiles, outfiles, controls=controls)
    np.testing.assert_array_equal(readRaster(outfiles.out), array * 2)


def test_a_named_profile_makes_the_pool_and_the_style_wins(tmp_path, profilesFile, poolsMade):
    runDouble(tmp_path, applier.ConcurrencyStyle(
        numComputeWorkers=2, computeWorkerKind=applier.CW_PROFILE,
        computeWorkerProfile="here"))
    [pool] = poolsMade
    assert type(pool).__name__ == "LocalPool"
    assert pool.work_dir_parent == str(profilesFile)  # the profile's
    assert (pool.mode, pool.max_workers, pool.parallelism) == ("workers", 2, 2)  # the style's


def test_the_profile_variable_names_the_profile(tmp_path, profilesFile, poolsMade, monkeypatch):
    monkeypatch.setenv("POOLPARTY_RASTER_PROFILE", "here")
    runDouble(tmp_path, applier.ConcurrencyStyle(computeWorkerKind=applier.CW_PROFILE))
    [pool] = poolsMade
    # All the profile's: its mode, its one process.
    assert (type(pool).__name__, pool.mode, pool.parallelism) == ("LocalPool", "array", 1)
    assert pool.work_dir_parent == str(profilesFile)


@pytest.mark.parametrize("scheduler, profile, pool_class", [
    ("dummy_slurm", "cluster", "SlurmArrayPool"), ("real_slurm", "cluster", "SlurmArrayPool"),
    ("real_sge", "gridengine", "SgePool")])
def test_a_cluster_profile_runs_the_blocks_on_its_scheduler(tmp_path, profilesFile, poolsMade,
                                                             request, scheduler, profile,
                                                             pool_class):
    request.getfixturevalue(scheduler)
    runDouble(tmp_path, applier.ConcurrencyStyle(
        numComputeWorkers=2, computeWorkerKind=applier.CW_PROFILE,
        computeWorkerProfile=profile))
    [pool] = poolsMade
    assert type(pool).__name__ == pool_class
    assert pool.work_dir_parent == str(profilesFile)


def test_an_unknown_profile_names_the_file_and_the_choices(tmp_path, profilesFile):
    with pytest.raises(ProfileError,
                       match=r"config\.toml: no profile 'elsewhere'.*cluster, gridengine, here"):
        runDouble(tmp_path, applier.ConcurrencyStyle(
            computeWorkerKind=applier.CW_PROFILE, computeWorkerProfile="elsewhere"))
    assert not (tmp_path / "out.tif").exists()


def test_a_profile_name_needs_the_profile_kind():
    with pytest.raises(ValueError, match="computeWorkerProfile='here' needs "
                                         "computeWorkerKind=CW_PROFILE"):
        applier.ConcurrencyStyle(computeWorkerKind=applier.CW_SUBPROC,
                                 computeWorkerProfile="here")
