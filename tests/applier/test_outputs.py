"""Output files: nodata, statistics, overviews, drivers, otherArgs, no partial files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterhelpers import readRaster, writeRaster

from poolparty_raster import applier

NODATA = -999


@pytest.fixture
def withHoles(tmp_path):
    """int16, 90 rows x 110 cols, with nodata -999 in a square and along row 3."""
    array = (np.arange(90 * 110, dtype=np.int16).reshape(1, 90, 110) % 500) - 100
    array[:, 20:40, 30:60] = NODATA
    array[:, 3, :] = NODATA
    return writeRaster(tmp_path / "holes.tif", array, nodata=NODATA), array


def doubleKeepingNodata(info, inputs, outputs):
    nodata = info.getNoDataValueFor(inputs.img)
    outputs.out = np.where(inputs.img == nodata, nodata, inputs.img * 2).astype(np.int16)


def runDouble(withHoles, tmp_path, name="out.tif", **setters):
    filename, _ = withHoles
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / name)
    controls = applier.ApplierControls()
    controls.setWindowXsize(32)
    controls.setWindowYsize(32)
    controls.setStatsIgnore(NODATA)
    for setter, args in setters.items():
        getattr(controls, setter)(*args)
    applier.apply(doubleKeepingNodata, infiles, outfiles, controls=controls)
    return outfiles.out


def test_nodata_in_nodata_out_with_stats_and_overviews(withHoles, tmp_path):
    _, array = withHoles
    out = runDouble(withHoles, tmp_path, setOverviewLevels=([2, 4],), setOverviewMinDim=(33,))
    expected = np.where(array == NODATA, NODATA, array * 2)
    np.testing.assert_array_equal(readRaster(out), expected)
    valid = expected[expected != NODATA].astype(np.float64)
    with rasterio.open(out) as ds:
        assert ds.nodata == NODATA
        assert ds.overviews(1) == [2]  # 90 // 4 = 22 is below the minimum of 33
        tags = ds.tags(1)
    assert float(tags["STATISTICS_MINIMUM"]) == valid.min()
    assert float(tags["STATISTICS_MAXIMUM"]) == valid.max()
    assert float(tags["STATISTICS_MEAN"]) == pytest.approx(valid.mean(), rel=1e-12)
    assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(valid.std(), rel=1e-12)


@pytest.mark.parametrize("rows, cols, levels", [
    (600, 1100, [4]),   # 600 // 4 = 150 > 128 keeps level 4; 600 // 8 = 75 does not
    (160, 300, []),     # 160 // 4 = 40: no overview is worth having (RIOS 1 kept it, at 33)
])
def test_default_overview_levels_follow_rios_2(tmp_path, rows, cols, levels):
    filename = writeRaster(tmp_path / "big.tif", np.ones((1, rows, cols), np.uint8))
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    applier.apply(lambda info, inputs, outputs: setattr(outputs, "out", inputs.img),
                  infiles, outfiles)
    with rasterio.open(outfiles.out) as ds:
        assert ds.overviews(1) == levels
    controls = applier.ApplierControls()
    assert controls.overviewLevels == (4, 8, 16, 32, 64, 128, 256, 512)
    assert controls.overviewMinDim == 128


def test_stats_and_overviews_switched_off(withHoles, tmp_path):
    out = runDouble(withHoles, tmp_path, setCalcStats=(False,), setOmitPyramids=(True,),
                    setOverviewLevels=([2, 4],))
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == []
        assert not any(k.startswith("STATISTICS_") for k in ds.tags(1))
    assert sorted(os.listdir(tmp_path)) == ["holes.tif", "out.tif"]


def test_cog_output(withHoles, tmp_path):
    _, array = withHoles
    out = runDouble(withHoles, tmp_path, "out.tif", setOutputDriverName=("COG",),
                    setCreationOptions=(["COMPRESS=LZW"],))
    np.testing.assert_array_equal(readRaster(out), np.where(array == NODATA, NODATA, array * 2))
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.compression.name.upper() == "LZW"
        assert "STATISTICS_MEAN" in ds.tags(1)
    assert sorted(os.listdir(tmp_path)) == ["holes.tif", "out.tif"]


def test_other_driver_with_sidecar(withHoles, tmp_path):
    _, array = withHoles
    out = runDouble(withHoles, tmp_path, "out.img", setOutputDriverName=("ENVI",),
                    setOmitPyramids=(True,))
    np.testing.assert_array_equal(readRaster(out), np.where(array == NODATA, NODATA, array * 2))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
    assert os.path.exists(tmp_path / "out.hdr")


def histogram(info, inputs, outputs, otherArgs):
    otherArgs.hist += np.bincount(inputs.img[0].ravel(), minlength=256)


@pytest.mark.parametrize("kind", [applier.CW_NONE, applier.CW_THREADS, applier.CW_SUBPROC])
def test_other_args_histogram(tmp_path, kind):
    # 600 x 1030 in 64 x 64 windows: 170 blocks, several tasks on every pool (a process
    # pool's task takes at least 0.25 Mpix), edge blocks that do not fill a window.
    rng = np.random.default_rng(7)
    array = rng.integers(0, 256, size=(1, 600, 1030), dtype=np.uint8)
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", array)
    otherArgs = applier.OtherInputs()
    otherArgs.hist = np.zeros(256, np.int64)
    controls = applier.ApplierControls()
    controls.setWindowXsize(64)
    controls.setWindowYsize(64)
    if kind != applier.CW_NONE:
        extra = {"progress": False} if kind == applier.CW_SUBPROC else {}
        controls.setConcurrencyStyle(applier.ConcurrencyStyle(
            numComputeWorkers=2, computeWorkerKind=kind, computeWorkerExtraParams=extra))
    result = applier.apply(histogram, infiles, applier.FilenameAssociations(), otherArgs,
                           controls)
    merged = sum(o.hist for o in result.otherArgsList)
    np.testing.assert_array_equal(merged, np.bincount(array.ravel(), minlength=256))
    if kind == applier.CW_NONE:
        assert result.otherArgsList == [otherArgs]
    else:
        assert len(result.otherArgsList) > 1
        assert otherArgs.hist.sum() == 0
    assert "userfunction" in result.timings.formatReport()


def test_unsupported_setter_is_explicit():
    with pytest.raises(NotImplementedError, match="setJobManagerType"):
        applier.ApplierControls().setJobManagerType("slurm")
