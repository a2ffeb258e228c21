"""RIOS's API as scripts use it: ConcurrencyStyle arguments, the setters, the structures, the
info attributes, and RIOS's rules for grids."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterhelpers import ORIGIN, PIXEL, readRaster, writeRaster

from poolparty_raster import applier


def test_concurrency_style_accepts_every_rios_argument():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # RIOS's defaults ask for nothing ignored: no warning
        applier.ConcurrencyStyle(numComputeWorkers=2, computeWorkerKind=applier.CW_THREADS,
                                 computeWorkersRead=False, haveSharedTemp=False)
    with pytest.warns(UserWarning) as record:
        style = applier.ConcurrencyStyle(
            numReadWorkers=1, numComputeWorkers=2, computeWorkerKind=applier.CW_THREADS,
            computeWorkersRead=False, haveSharedTemp=True, readBufferInsertTimeout=5,
            readBufferPopTimeout=6, computeBufferInsertTimeout=7, computeBufferPopTimeout=8,
            computeBarrierTimeout=9)
    assert len(record) == 1
    message = str(record[0].message)
    for name in ("numReadWorkers=1", "readBufferInsertTimeout=5", "readBufferPopTimeout=6",
                 "computeBufferInsertTimeout=7", "computeBufferPopTimeout=8",
                 "computeBarrierTimeout=9"):
        assert name in message
    assert (style.numComputeWorkers, style.computeWorkersRead, style.computeBarrierTimeout) == (2, False, 9)
    assert applier.ConcurrencyStyle().computeWorkersRead is False  # RIOS's default


def test_rios_setters_exist():
    controls = applier.ApplierControls()
    controls.setWindowSize(64, 32)
    assert (controls.windowxsize, controls.windowysize) == (64, 32)
    controls.setOverviewMinDim(10)
    controls.setOverviewLevels([2, 4], imagename="out")
    controls.setOverviewLevels([8])
    assert controls.getOptionForImagename("overviewLevels", "out") == (2, 4)
    assert controls.getOptionForImagename("overviewLevels", "other") == (8,)
    assert controls.getOptionForImagename("overviewMinDim", "x") == 10
    controls.setTempdir("/nonexistent")
    controls.setLoggingStream(None)
    controls.setApproxStats(True)
    controls.setNumThreads(3)
    assert (controls.concurrency.computeWorkerKind, controls.concurrency.numComputeWorkers) == (
        applier.CW_THREADS, 3)
    controls.selectInputImageLayers([2, 1], imagename="img")
    with pytest.raises(NotImplementedError, match="setJobManagerType"):
        controls.setJobManagerType(1)


def copyImg(info, inputs, outputs):
    outputs.out = inputs.img


def runCopy(tmp_path, filename, window=32, **setters):
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(window, window)
    for setter, args in setters.items():
        getattr(controls, setter)(*args)
    applier.apply(copyImg, infiles, outfiles, controls=controls)
    return outfiles.out


def test_overview_aggregation_none_and_per_image_levels(tmp_path):
    filename = writeRaster(tmp_path / "in.tif", np.arange(100 * 120, dtype=np.int32).reshape(1, 100, 120))
    out = runCopy(tmp_path, filename, setOverviewAggregationType=(None,),
                  setOverviewLevels=([2, 4], "out"), setOverviewMinDim=(20,))
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == [2, 4]  # 100 // 4 = 25 > 20


def test_calc_stats_false_skips_pyramids_too(tmp_path):
    filename = writeRaster(tmp_path / "in.tif", np.ones((1, 300, 300), np.uint8))
    out = runCopy(tmp_path, filename, setCalcStats=(False,))
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == []
        assert not any(k.startswith("STATISTICS_") for k in ds.tags(1))


def test_select_layers_and_per_band_nodata(tmp_path):
    array = np.stack([np.full((40, 50), v, np.int16) for v in (1, 2, 3)])
    array[:, :5, :] = [[[7]], [[8]], [[9]]]
    filename = writeRaster(tmp_path / "in.tif", array)
    seen = {}

    def grab(info, inputs, outputs):
        seen["nodata"] = [int(info.getNoDataValueFor(inputs.img, b)) for b in (1, 2)]
        outputs.out = inputs.img
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.selectInputImageLayers([3, 1])
    controls.setInputNoDataValue([9, 7])
    applier.apply(grab, infiles, outfiles, controls=controls)
    np.testing.assert_array_equal(readRaster(outfiles.out), array[[2, 0]])
    assert seen["nodata"] == [9, 7]


def test_structures_as_in_rios():
    infiles = applier.FilenameAssociations()
    infiles.img = "a.tif"
    infiles.imgs = ["b.tif", "c.tif"]
    assert infiles["img"] == "a.tif" and infiles["imgs", 1] == "c.tif"
    assert infiles["imgs"] == ["b.tif", "c.tif"]
    assert "img" in infiles and ("imgs", 1) in infiles
    assert "nothing" not in infiles and ("imgs", 5) not in infiles and ("img", 0) not in infiles
    assert len(infiles) == 3
    blocks = applier.BlockAssociations(infiles)
    assert blocks.img is None and blocks.imgs == [None, None] and len(blocks) == 3
    blocks["imgs", 1] = 5
    blocks["img"] = 4
    assert blocks["imgs", 1] == 5 and blocks["img"] == 4
    b = applier.ApplierBlockDefn
    assert sorted([b(10, 0, 5, 5), b(0, 20, 5, 5), b(0, 10, 5, 5)]) == [
        b(0, 10, 5, 5), b(0, 20, 5, 5), b(10, 0, 5, 5)]
    assert len({b(0, 0, 1, 1), b(0, 0, 1, 1)}) == 1


def test_timers_report_levels(tmp_path):
    filename = writeRaster(tmp_path / "in.tif", np.ones((1, 40, 40), np.uint8))
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    result = applier.apply(copyImg, infiles, outfiles)
    assert len(result.timings.getDurationsForName("walltime")) == 1
    report0 = result.timings.formatReport()
    report1 = result.timings.formatReport(level=1)
    assert report0.startswith("Wall clock elapsed time:")
    assert "userfunction" in report0 and "N,Min,Lower,Median,Upper,Max" in report1
    assert "N,Min" not in report0


def copyIn32PixelWindows(function, filename, tmp_path):
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(32, 32)
    applier.apply(function, infiles, outfiles, controls=controls)


def test_info_attributes(tmp_path):
    filename = writeRaster(tmp_path / "in.tif", np.ones((1, 50, 70), np.uint8))
    seen = []

    def look(info, inputs, outputs):
        seen.append((info.xsize, info.ysize, info.blockwidth, info.blockheight,
                     info.blocktl.x, info.blocktl.y, info.blockbr.x, info.blockbr.y))
        outputs.out = inputs.img
    copyIn32PixelWindows(look, filename, tmp_path)
    x0, y0 = ORIGIN
    assert (70, 50, 32, 32, x0, y0, x0 + 32 * PIXEL, y0 - 32 * PIXEL) in seen
    assert (70, 50, 6, 18, x0 + 64 * PIXEL, y0 - 32 * PIXEL, x0 + 70 * PIXEL, y0 - 50 * PIXEL) in seen


def test_info_block_grid_and_georeferencing_on_a_multi_block_run(tmp_path):
    # 50 rows x 70 cols in 32 x 32 windows: 2 rows of 3 blocks, the last ones partial.
    filename = writeRaster(tmp_path / "in.tif", np.ones((1, 50, 70), np.uint8))
    seen = {}

    def look(info, inputs, outputs):
        b = info.blockDefn
        seen[b.top, b.left] = dict(
            total=info.getTotalBlocks(), count=info.getBlockCount(),
            first=info.isFirstBlock(), last=info.isLastBlock(), size=info.getBlockSize(),
            transform=info.getTransform(), projection=info.getProjection(),
            totalSize=info.getTotalSize(), pixel=info.getPixelSize(),
            window=info.getWindowSize())
        outputs.out = inputs.img
    copyIn32PixelWindows(look, filename, tmp_path)
    assert sorted(seen) == [(0, 0), (0, 32), (0, 64), (32, 0), (32, 32), (32, 64)]
    with rasterio.open(filename) as ds:
        gdalTransform, crs = ds.transform.to_gdal(), ds.crs
    for (top, left), s in seen.items():
        assert s["total"] == (3, 2) and s["count"] == (left // 32, top // 32)
        assert s["first"] == ((top, left) == (0, 0))
        assert s["last"] == ((top, left) == (32, 64))
        assert s["size"] == (6 if left == 64 else 32, 18 if top == 32 else 32)
        assert s["transform"] == gdalTransform == (ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL)
        assert rasterio.crs.CRS.from_wkt(s["projection"]) == crs
        assert (s["totalSize"], s["pixel"], s["window"]) == ((70, 50), (PIXEL, PIXEL), (32, 32))


def test_inputs_on_different_grids_need_a_reference(tmp_path):
    a = writeRaster(tmp_path / "a.tif", np.ones((1, 20, 20), np.uint8))
    half = Affine(PIXEL, 0, ORIGIN[0] + PIXEL / 3, 0, -PIXEL, ORIGIN[1])
    b = writeRaster(tmp_path / "b.tif", np.ones((1, 20, 20), np.uint8), transform=half)
    infiles = applier.FilenameAssociations()
    infiles.a, infiles.b = a, b
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    with pytest.raises(applier.ResampleNeededError, match="setReferenceImage"):
        applier.apply(lambda info, i, o: setattr(o, "out", i.a), infiles, outfiles)


def test_reference_image_that_is_not_an_input(tmp_path):
    array = np.arange(40 * 40, dtype=np.int16).reshape(1, 40, 40)
    data = writeRaster(tmp_path / "data.tif", array)
    # The reference covers rows/cols 10..30 of the data, on the same pixel grid.
    shifted = Affine(PIXEL, 0, ORIGIN[0] + 10 * PIXEL, 0, -PIXEL, ORIGIN[1] - 10 * PIXEL)
    ref = writeRaster(tmp_path / "ref.tif", np.zeros((1, 20, 20), np.uint8), transform=shifted)
    out = runCopy(tmp_path, data, setReferenceImage=(ref,),
                  setFootprintType=(applier.BOUNDS_FROM_REFERENCE,))
    np.testing.assert_array_equal(readRaster(out), array[:, 10:30, 10:30])


def test_bool_output_is_byte_and_float16_is_refused(tmp_path):
    filename = writeRaster(tmp_path / "in.tif", np.arange(30 * 30, dtype=np.int16).reshape(1, 30, 30))
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    applier.apply(lambda info, i, o: setattr(o, "out", i.img % 2 == 0), infiles, outfiles)
    with rasterio.open(outfiles.out) as ds:
        assert ds.dtypes[0] == "uint8"
        np.testing.assert_array_equal(ds.read(), (np.arange(900).reshape(1, 30, 30) % 2 == 0))
    with pytest.raises(TypeError, match="float16"):
        applier.apply(lambda info, i, o: setattr(o, "out", i.img.astype(np.float16)),
                      infiles, outfiles)
