"""Outputs as RIOS writes them: the driver of a .img, overviews (the centre pixel of each
cell), thematic layers, and statistics and histograms of float and wide integer bands, on
this machine's pools and on the real schedulers. Expected values come from numpy on the
arrays the tests make, never from the applier's own code."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterhelpers import writeRaster

from poolparty_raster import applier

_CLUSTER = {"progress": False, "polling_interval": 0.2, "filesystem_lag": 0.5}


def copyOut(info, inputs, outputs, otherArgs):
    outputs.out = inputs.img.astype(otherArgs.dtype)


def run(tmp_path, array, outname, configure=None, dtype=None, nodata=None):
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array, nodata=nodata)
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / outname)
    controls = applier.ApplierControls()
    controls.setStatsIgnore(nodata)
    if configure is not None:
        configure(controls)
    otherArgs = applier.OtherInputs()
    otherArgs.dtype = dtype or array.dtype
    result = applier.apply(copyOut, infiles, outfiles, otherArgs, controls)
    return outfiles.out, result


def overviewPixels(path, level_index):
    with rasterio.open(path, OVERVIEW_LEVEL=level_index) as ds:
        return ds.read()


@pytest.mark.parametrize("name, site, driver", [
    ("out.img", None, "HFA"), ("out.IMG", None, "HFA"), ("out.tif", None, "GTiff"),
    ("out.img", "GTiff", "GTiff"), ("out.tif", "HFA", "HFA")])
def test_output_driver_follows_rios_defaults(tmp_path, monkeypatch, name, site, driver):
    """RIOS writes HFA unless $RIOS_DFLT_DRIVER says otherwise; users' tools open .img as
    HFA. Here the name decides when the site says nothing."""
    if site is not None:
        monkeypatch.setenv("RIOS_DFLT_DRIVER", site)
    array = np.arange(40 * 50, dtype=np.uint8).reshape(1, 40, 50)
    path, _ = run(tmp_path, array, name)
    with rasterio.open(path) as ds:
        assert ds.driver == driver
        np.testing.assert_array_equal(ds.read(), array)


@pytest.mark.parametrize("window", [256, 96])
@pytest.mark.parametrize("kind", [applier.CW_NONE, applier.CW_THREADS])
def test_default_overviews_take_each_cells_centre_pixel(tmp_path, window, kind):
    rng = np.random.default_rng(5)
    array = rng.integers(-30000, 30000, (2, 1102, 1301), dtype=np.int16)

    def configure(controls):
        controls.setWindowSize(window, window)
        if kind != applier.CW_NONE:
            controls.setConcurrencyStyle(applier.ConcurrencyStyle(
                numComputeWorkers=2, computeWorkerKind=kind))
    path, result = run(tmp_path, array, "out.tif", configure)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == [4, 8]  # 1102 // 16 is not above RIOS's minimum of 128
    for index, level in enumerate([4, 8]):
        overview = overviewPixels(path, index)
        assert overview.shape[1:] == (-(-1102 // level), -(-1301 // level))
        centres = array[:, level // 2::level, level // 2::level]
        rows, cols = centres.shape[1:]
        np.testing.assert_array_equal(overview[:, :rows, :cols], centres)
    assert result.singlePassMgr.doSinglePassPyramids("out")


def test_overviews_left_to_gdal_as_rios_does_when_single_pass_is_off(tmp_path):
    """setSinglePassPyramids(False): RIOS lets GDAL build them after the last block, and
    GDAL's NEAREST takes each cell's top-left pixel."""
    array = np.random.default_rng(6).integers(0, 255, (1, 600, 700), dtype=np.uint8)
    path, result = run(tmp_path, array, "out.tif", lambda c: c.setSinglePassPyramids(False))
    np.testing.assert_array_equal(overviewPixels(path, 0), array[:, ::4, ::4])
    assert not result.singlePassMgr.doSinglePassPyramids("out")


def test_single_pass_pyramids_need_nearest(tmp_path):
    def configure(controls):
        controls.setSinglePassPyramids(True)
        controls.setOverviewAggregationType("AVERAGE")
    with pytest.raises(ValueError, match="NEAREST"):
        run(tmp_path, np.zeros((1, 600, 600), np.uint8), "out.tif", configure)


@pytest.mark.parametrize("outname", ["classes.tif", "classes.img"])
def test_thematic_output(tmp_path, outname):
    rng = np.random.default_rng(7)
    array = rng.integers(3, 12, (1, 700, 650), dtype=np.uint16)
    array[0, :50] = 0  # nodata

    path, result = run(tmp_path, array, outname, lambda c: c.setThematic(True), nodata=0)
    values = array[array != 0]
    expected = np.bincount(values, minlength=12)
    expected[0] = 0
    with rasterio.open(path) as ds:
        tags = ds.tags(1)
        assert tags["LAYER_TYPE"] == "thematic"
        hist = [int(v) for v in tags["STATISTICS_HISTOBINVALUES"].rstrip("|").split("|")]
        assert hist == expected.tolist()  # a bin per class from 0, as RIOS's
        assert (tags["STATISTICS_HISTOMIN"], tags["STATISTICS_HISTOMAX"]) == ("0", "11")
        assert tags["STATISTICS_HISTOBINFUNCTION"] == "direct"
        assert int(tags["STATISTICS_MODE"]) == int(np.argmax(expected))
        assert ds.overviews(1) == [4]
    centres = array[:, 2::4, 2::4]
    np.testing.assert_array_equal(overviewPixels(path, 0)[:, :, :centres.shape[2]], centres)
    assert result.singlePassMgr.doSinglePassHistogram("out")


def test_athematic_is_the_default_and_false_is_a_no_op(tmp_path):
    array = np.ones((1, 30, 30), np.uint8)
    path, _ = run(tmp_path, array, "out.tif", lambda c: c.setThematic(False))
    with rasterio.open(path) as ds:
        assert "LAYER_TYPE" not in ds.tags(1)


def test_thematic_output_refuses_negative_classes(tmp_path):
    array = np.full((1, 30, 30), -2, np.int16)
    with pytest.raises(ValueError, match="negative"):
        run(tmp_path, array, "out.tif", lambda c: c.setThematic(True))
    assert not (tmp_path / "out.tif").exists()


def expectedStats(values):
    """RIOS's statistics of the counted values, by numpy: 256 linear bins from the minimum
    to the maximum, the median the first bin whose running count reaches half the pixels,
    the mode the fullest bin, each as bin * width + minimum."""
    values = values.astype(np.float64)
    lo, hi = values.min(), values.max()
    hist, _ = np.histogram(values, bins=256, range=(lo, hi))
    step = (hi - lo) / 256
    median = np.flatnonzero(np.cumsum(hist) >= hist.sum() / 2)[0] * step + lo
    mode = np.argmax(hist) * step + lo
    return values, hist, median, mode


@pytest.mark.parametrize("outname", ["out.tif", "out.img"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_output_statistics_and_histogram(tmp_path, outname, dtype):
    rng = np.random.default_rng(8)
    array = rng.normal(50, 12, (1, 530, 610)).astype(dtype)
    nodata = -999.0
    array[0, 100:140, 200:260] = nodata
    path, result = run(tmp_path, array, outname, nodata=nodata)
    values, hist, median, mode = expectedStats(array[array != nodata])
    with rasterio.open(path) as ds:
        tags = ds.tags(1)
    written = [int(v) for v in tags["STATISTICS_HISTOBINVALUES"].rstrip("|").split("|")]
    assert written == hist.tolist()
    assert tags["STATISTICS_HISTOBINFUNCTION"] == "linear"
    assert float(tags["STATISTICS_HISTOMIN"]) == values.min()
    assert float(tags["STATISTICS_HISTOMAX"]) == values.max()
    assert float(tags["STATISTICS_MEDIAN"]) == pytest.approx(median, rel=1e-9)
    assert float(tags["STATISTICS_MODE"]) == pytest.approx(mode, rel=1e-9)
    assert float(tags["STATISTICS_MEAN"]) == pytest.approx(values.mean(), rel=1e-12)
    assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(values.std(), rel=1e-9)
    # Float bins need the final minimum and maximum: a second pass, as in RIOS.
    assert not result.singlePassMgr.doSinglePassHistogram("out")
    assert result.singlePassMgr.doSinglePassStatistics("out")


def test_wide_integer_histogram_has_whole_valued_linear_bins(tmp_path):
    """Int32 over millions of values: too wide to count per value on the workers, still
    the histogram RIOS makes (its per-value counts re-binned into 256 bins whose edges
    are int(i * step) values above the minimum)."""
    rng = np.random.default_rng(9)
    array = rng.integers(-1_000_000, 2_500_000, (1, 400, 300), dtype=np.int32)
    path, _ = run(tmp_path, array, "out.tif", nodata=None)
    values = array.ravel().astype(np.int64)
    lo, hi = values.min(), values.max()
    step = (hi - lo) / 256
    perValue = np.bincount(values - lo)
    expected = [perValue[int(i * step):int((i + 1) * step) + (i == 255)].sum()
                for i in range(256)]
    with rasterio.open(path) as ds:
        tags = ds.tags(1)
    written = [int(v) for v in tags["STATISTICS_HISTOBINVALUES"].rstrip("|").split("|")]
    assert written == expected
    assert (tags["STATISTICS_HISTOMIN"], tags["STATISTICS_HISTOMAX"]) == (repr(int(lo)),
                                                                          repr(int(hi)))


def thematicAndFloat(info, inputs, outputs):
    img = inputs.img.astype(np.float32)
    outputs.classes = (inputs.img % 7).astype(np.uint8)
    outputs.scaled = img * 0.37 + 2.5


@pytest.mark.parametrize("scheduler, kind", [("real_slurm", "CW_SLURM"),
                                             ("real_sge", "CW_SGE")])
def test_thematic_and_float_outputs_on_a_real_scheduler(tmp_path, request, scheduler, kind):
    """A thematic and a float output with statistics and pyramids, computed by jobs of the
    real scheduler, are what the same apply gives in this process, and what numpy says."""
    request.getfixturevalue(scheduler)
    rng = np.random.default_rng(10)
    array = rng.integers(0, 5000, (1, 600, 540), dtype=np.int16)
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array)
    described = {}
    for label in ("serial", "cluster"):
        outfiles = applier.FilenameAssociations()
        outfiles.classes = str(tmp_path / f"{label}-classes.img")
        outfiles.scaled = str(tmp_path / f"{label}-scaled.tif")
        controls = applier.ApplierControls()
        controls.setThematic(True, imagename="classes")
        controls.setStatsIgnore(None)
        if label == "cluster":
            controls.setConcurrencyStyle(applier.ConcurrencyStyle(
                numComputeWorkers=2, computeWorkerKind=kind, computeWorkerExtraParams=_CLUSTER))
        applier.apply(thematicAndFloat, infiles, outfiles, controls=controls)
        described[label] = {name: _describe(path) for name, _, path in outfiles}
    for name, serial in described["serial"].items():
        cluster = described["cluster"][name]
        # The mean and standard deviation are summed in another order over other tasks.
        for key in ("STATISTICS_MEAN", "STATISTICS_STDDEV"):
            assert float(cluster["tags"].pop(key)) == pytest.approx(
                float(serial["tags"].pop(key)), rel=1e-12)
        assert cluster == serial
    classes, scaled = described["cluster"]["classes"], described["cluster"]["scaled"]
    assert classes["tags"]["LAYER_TYPE"] == "thematic"
    assert classes["tags"]["STATISTICS_HISTOBINVALUES"] == "|".join(
        map(str, np.bincount((array % 7).ravel(), minlength=7))) + "|"
    centres = (array % 7)[:, 2::4, 2::4]
    np.testing.assert_array_equal(np.array(classes["overview"])[:, :, :centres.shape[2]],
                                  centres)
    values, hist, median, _ = expectedStats(array.astype(np.float32) * np.float32(0.37)
                                            + np.float32(2.5))
    assert scaled["tags"]["STATISTICS_HISTOBINVALUES"] == "|".join(map(str, hist)) + "|"
    assert float(scaled["tags"]["STATISTICS_MEDIAN"]) == pytest.approx(median, rel=1e-9)


def _describe(path):
    """What a user sees of an output, in comparable values."""
    with rasterio.open(path) as ds:
        description = {"driver": ds.driver, "tags": ds.tags(1), "pixels": ds.read().tobytes()}
    description["overview"] = overviewPixels(path, 0).tolist()
    return description
