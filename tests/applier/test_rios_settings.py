"""RIOS 2's newer controls and its site configuration: the single-pass and omit setters,
the progress object, and the defaults a site sets through RIOS_DFLT_* variables."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterhelpers import writeRaster

from poolparty_raster import applier


def copyImg(info, inputs, outputs):
    outputs.out = inputs.img


def runCopy(tmp_path, array, configure=lambda controls: None, name="out.tif"):
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array)
    outfiles.out = str(tmp_path / name)
    controls = applier.ApplierControls()  # after the test set its environment
    controls.setWindowSize(64, 64)
    configure(controls)
    applier.apply(copyImg, infiles, outfiles, controls=controls)
    return outfiles.out


def described(path):
    """What a single-pass setter could change: pixels, band metadata, overviews."""
    with rasterio.open(path) as ds:
        return ds.read(), ds.tags(1), ds.overviews(1)


RAMP = (np.arange(200 * 300, dtype=np.int16).reshape(1, 200, 300) % 700) - 50


@pytest.mark.parametrize("setter", ["setSinglePassPyramids", "setSinglePassBasicStats",
                                    "setSinglePassHistogram"])
@pytest.mark.parametrize("value", [True, False, None])
def test_single_pass_setters_are_accepted_and_change_nothing(tmp_path, setter, value):
    # Statistics and histograms are always gathered as the blocks are computed; overviews
    # are built with NEAREST either way (no site aggregation type is set here).
    def configure(controls):
        controls.setOverviewMinDim(33)
        getattr(controls, setter)(value)
        getattr(controls, setter)(value, imagename="out")
    baseline = described(runCopy(tmp_path, RAMP, lambda c: c.setOverviewMinDim(33), "base.tif"))
    data, tags, overviews = described(runCopy(tmp_path, RAMP, configure))
    np.testing.assert_array_equal(data, baseline[0])
    assert tags == baseline[1] and "STATISTICS_HISTOBINVALUES" in tags
    assert overviews == baseline[2] == [4]


def test_overviews_in_resampling_are_refused():
    controls = applier.ApplierControls()
    controls.setAllowOverviewsGdalwarp(False)  # what the warper does here anyway
    with pytest.raises(NotImplementedError, match="setAllowOverviewsGdalwarp"):
        controls.setAllowOverviewsGdalwarp(True)


@pytest.mark.parametrize("omit, absent, present", [
    ("setOmitBasicStats", "STATISTICS_MEAN", "STATISTICS_HISTOBINVALUES"),
    ("setOmitHistogram", "STATISTICS_HISTOBINVALUES", "STATISTICS_MEAN"),
])
def test_omit_basic_stats_or_histogram(tmp_path, omit, absent, present):
    tags = described(runCopy(tmp_path, RAMP, lambda c: getattr(c, omit)(True, "out")))[1]
    assert absent not in tags and present in tags
    if omit == "setOmitHistogram":
        assert "STATISTICS_MEDIAN" not in tags  # RIOS derives it from the histogram
    else:
        assert "STATISTICS_MEDIAN" in tags


def test_calc_stats_sets_the_three_omit_options_as_rios_2_does(tmp_path):
    def configure(controls):
        controls.setOverviewMinDim(33)
        controls.setCalcStats(False)
        controls.setOmitPyramids(False)  # asked for again, after setCalcStats
    _, tags, overviews = described(runCopy(tmp_path, RAMP, configure))
    assert overviews == [4]
    assert not any(k.startswith("STATISTICS_") for k in tags)


class PercentOnly:
    """The least a RIOS progress object needs: RIOS's applier calls setProgress alone."""

    def __init__(self):
        self.seen = []

    def setProgress(self, percent):
        self.seen.append(percent)


@pytest.mark.parametrize("kind", [applier.CW_NONE, applier.CW_THREADS])
def test_progress_object_with_only_set_progress(tmp_path, kind):
    progress = PercentOnly()

    def configure(controls):
        controls.setProgress(progress)
        controls.setWindowSize(32, 32)  # 7 x 10 blocks
        if kind != applier.CW_NONE:
            controls.setConcurrencyStyle(applier.ConcurrencyStyle(
                numComputeWorkers=2, computeWorkerKind=kind))
    runCopy(tmp_path, RAMP, configure)
    seen = progress.seen
    assert seen[0] == 0 and seen[-1] == 100
    assert seen == sorted(set(seen))  # called only when the percentage changes, as RIOS does


def test_site_overview_levels_and_minimum(tmp_path, monkeypatch):
    array = np.ones((1, 160, 300), np.uint8)
    monkeypatch.setenv("RIOS_DFLT_OVERVIEWLEVELS", "2,4,8")
    monkeypatch.setenv("RIOS_DFLT_MINOVERLEVELDIM", "33")
    # 160 // 2 = 80 and 160 // 4 = 40 exceed 33; 160 // 8 = 20 does not.
    assert described(runCopy(tmp_path, array))[2] == [2, 4]
    controls = applier.ApplierControls()
    assert (controls.overviewLevels, controls.overviewMinDim) == ((2, 4, 8), 33)


def test_site_driver_and_creation_options(tmp_path, monkeypatch):
    monkeypatch.setenv("RIOS_DFLT_DRIVER", "ENVI")
    with rasterio.open(runCopy(tmp_path, RAMP, name="out.img")) as ds:
        assert ds.driver == "ENVI"
    monkeypatch.delenv("RIOS_DFLT_DRIVER")
    monkeypatch.setenv("RIOS_DFLT_CREOPT_GTiff", "COMPRESS=LZW TILED=YES")
    with rasterio.open(runCopy(tmp_path, RAMP, name="lzw.tif")) as ds:
        assert ds.compression.name.upper() == "LZW"
        assert ds.block_shapes[0] == (64, 64)  # tiles still follow the windows
    # A script's own options win over the site's.
    own = runCopy(tmp_path, RAMP, lambda c: c.setCreationOptions(["COMPRESS=ZSTD"]), "own.tif")
    with rasterio.open(own) as ds:
        assert ds.compression.name.upper() == "ZSTD"


def checkerOverview(tmp_path, monkeypatch, singlePass, name):
    """Level-4 overview of a pattern whose 4 x 4 means differ from any one of its pixels."""
    rows, cols = np.mgrid[0:64, 0:64]
    array = ((rows % 4) * 40 + (cols % 4) * 10).astype(np.uint8)[np.newaxis]
    monkeypatch.setenv("RIOS_DFLT_OVERVIEWAGGTYPE", "AVERAGE")

    def configure(controls):
        controls.setOverviewLevels([4])
        controls.setOverviewMinDim(8)
        controls.setStatsIgnore(None)
        if singlePass is not None:
            controls.setSinglePassPyramids(singlePass)
    out = runCopy(tmp_path, array, configure, name)
    with rasterio.open(out, overview_level=0) as ds:
        return array, ds.read()


def test_site_overview_aggregation_type_applies_where_rios_uses_gdal(tmp_path, monkeypatch):
    # RIOS 2 writes overviews block by block (NEAREST) unless single-pass pyramids are
    # switched off; only then does GDAL build them with the site's aggregation type.
    array, nearest = checkerOverview(tmp_path, monkeypatch, None, "near.tif")
    assert nearest.shape == (1, 16, 16) and len(np.unique(nearest)) == 1
    assert nearest[0, 0, 0] in array[0, :4, :4]
    _, average = checkerOverview(tmp_path, monkeypatch, False, "avg.tif")
    np.testing.assert_array_equal(average, np.full((1, 16, 16), 75, np.uint8))
