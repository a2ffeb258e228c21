"""RIOS's API beyond the basics: a reference pixel grid, files for the extent, RIOS's own
ConcurrencyStyle objects, the setCallBeforeClose callback and RIOS's constants."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterhelpers import CRS_UTM, ORIGIN, PIXEL, readRaster, writeRaster
from rasterio.crs import CRS

from poolparty_raster import applier

HAVE_OSGEO = importlib.util.find_spec("osgeo") is not None


def copyImg(info, inputs, outputs):
    outputs.out = inputs.img


def runCopy(tmp_path, configure, array=None):
    array = np.arange(150 * 203, dtype=np.int32).reshape(1, 150, 203) if array is None else array
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array)
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    configure(controls)
    result = applier.apply(copyImg, infiles, outfiles, controls=controls)
    return array, outfiles.out, result


def pixgrid(left, top, cols, rows, res):
    """A pixel grid as rios.pixelgrid.PixelGridDefn describes one (the attributes only)."""
    return SimpleNamespace(xMin=left, xMax=left + cols * res, yMin=top - rows * res,
                           yMax=top, xRes=res, yRes=res,
                           projection=CRS.from_user_input(CRS_UTM).to_wkt())


def test_reference_pixgrid_sets_grid_and_extent(tmp_path):
    """A finer grid (10 m over 30 m inputs) over part of the input: nearest resampling
    repeats each input pixel 3 x 3."""
    left, top = ORIGIN[0] + 20 * PIXEL, ORIGIN[1] - 10 * PIXEL

    def configure(controls):
        controls.setReferencePixgrid(pixgrid(left, top, 90, 60, PIXEL / 3))
        controls.setFootprintType(applier.BOUNDS_FROM_REFERENCE)
    array, out, _ = runCopy(tmp_path, configure)
    expected = np.repeat(np.repeat(array[:, 10:30, 20:50], 3, axis=1), 3, axis=2)
    with rasterio.open(out) as ds:
        assert ds.transform == Affine(PIXEL / 3, 0, left, 0, -PIXEL / 3, top)
        assert ds.crs == CRS.from_user_input(CRS_UTM)
        np.testing.assert_array_equal(ds.read(), expected)


def test_reference_pixgrid_of_the_wrong_kind_is_refused(tmp_path):
    with pytest.raises(TypeError, match="xMin"):
        runCopy(tmp_path, lambda c: c.setReferencePixgrid("not a grid"))


def test_files_for_extent_give_the_working_extent(tmp_path):
    """An extent file (not an input) on the same grid, 50 rows x 60 cols, 10 rows and 20
    columns in: the output covers it alone."""
    extent = Affine(PIXEL, 0, ORIGIN[0] + 20 * PIXEL, 0, -PIXEL, ORIGIN[1] - 10 * PIXEL)
    extentFile = writeRaster(tmp_path / "extent.tif", np.zeros((1, 50, 60), np.uint8),
                             transform=extent)
    array, out, _ = runCopy(tmp_path, lambda c: c.setFilesForExtent([extentFile]))
    with rasterio.open(out) as ds:
        assert ds.transform == extent
    np.testing.assert_array_equal(readRaster(out), array[:, 10:60, 20:80])


def test_rios_concurrency_style_objects_are_taken_as_they_are(tmp_path):
    """RIOS's own rios.structures.ConcurrencyStyle (computeWorkerExtraParams None): read
    attribute by attribute."""
    riosStyle = SimpleNamespace(numReadWorkers=0, numComputeWorkers=2,
                                computeWorkerKind="CW_THREADS", computeWorkersRead=False,
                                singleBlockComputeWorkers=False, haveSharedTemp=True,
                                readBufferInsertTimeout=10, readBufferPopTimeout=10,
                                computeBufferInsertTimeout=10, computeBufferPopTimeout=20,
                                computeBarrierTimeout=600, computeWorkerExtraParams=None)

    def configure(controls):
        controls.setWindowSize(64, 64)
        controls.setConcurrencyStyle(riosStyle)
        assert controls.concurrency.computeWorkerExtraParams == {}
    array, out, result = runCopy(tmp_path, configure)
    np.testing.assert_array_equal(readRaster(out), array)
    assert len(result.otherArgsList) > 1  # it did run on the threads


def test_rios_concurrency_style_with_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="CW_NOSUCH"):
        applier.ApplierControls().setConcurrencyStyle(
            SimpleNamespace(computeWorkerKind="CW_NOSUCH", computeWorkerExtraParams=None))


def addMetadata(ds, name, value):
    ds.SetMetadataItem(name, value)


@pytest.mark.skipif(not HAVE_OSGEO, reason="GDAL's Python bindings (osgeo) are not installed")
def test_call_before_close_gets_a_gdal_dataset(tmp_path):
    def configure(controls):
        controls.setCallBeforeClose(addMetadata, ("MADE_BY", "test"), imagename="out")
    array, out, _ = runCopy(tmp_path, configure)
    with rasterio.open(out) as ds:
        assert ds.tags()["MADE_BY"] == "test"
        assert "STATISTICS_MEAN" in ds.tags(1)  # called after the statistics were written
    np.testing.assert_array_equal(readRaster(out), array)


@pytest.mark.skipif(HAVE_OSGEO, reason="GDAL's Python bindings (osgeo) are installed")
def test_call_before_close_without_gdal_says_what_to_install():
    with pytest.raises(ImportError, match=r"poolparty_raster\[gdal\]"):
        applier.ApplierControls().setCallBeforeClose(addMetadata, ("A", "B"))


def test_rios_window_constants_are_the_defaults(tmp_path):
    """RIOS scripts size things with applier.DEFAULTWINDOWXSIZE/YSIZE."""
    seen = []

    def record(info, inputs, outputs):
        seen.append(info.getBlockSize())
        outputs.out = inputs.img
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", np.zeros((1, 300, 300), np.uint8))
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    applier.apply(record, infiles, outfiles)
    assert seen[0] == (applier.DEFAULTWINDOWXSIZE, applier.DEFAULTWINDOWYSIZE)
