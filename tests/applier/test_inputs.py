"""Reading the inputs: what fills pixels outside an input (its nodata, never a silent 0),
per-band nodata, and nodata overrides the input's dtype cannot hold."""
from __future__ import annotations

import os

import numpy as np
import pytest
from affine import Affine
from rasterhelpers import ORIGIN, PIXEL, readRaster, writeRaster

from poolparty_raster import applier


def keepBlocks(info, inputs, outputs, otherArgs):
    otherArgs.seen.append((info.blockDefn, inputs.img.copy()))
    outputs.out = inputs.img


@pytest.mark.parametrize("source", ["file", "override"])
def test_overlap_margin_outside_the_image_holds_the_nodata_value(tmp_path, source):
    rng = np.random.default_rng(3)
    array = rng.integers(0, 100, size=(2, 45, 70), dtype=np.int16)
    nodata = -7 if source == "file" else 9
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", array,
                              nodata=nodata if source == "file" else None)
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(32, 32)
    controls.setOverlap(3)
    if source == "override":
        controls.setInputNoDataValue(nodata)
    otherArgs = applier.OtherInputs()
    otherArgs.seen = []
    applier.apply(keepBlocks, infiles, outfiles, otherArgs, controls)  # CW_NONE: this object
    padded = np.pad(array, ((0, 0), (3, 3), (3, 3)), constant_values=nodata)
    assert len(otherArgs.seen) == 6
    for b, block in otherArgs.seen:
        np.testing.assert_array_equal(block, padded[:, b.top:b.top + b.nrows + 6,
                                                    b.left:b.left + b.ncols + 6])


def bothInputs(info, inputs, outputs):
    outputs.outA = inputs.a
    outputs.outB = inputs.b


@pytest.mark.parametrize("resampled", [False, True], ids=["on-grid", "resampled"])
def test_union_footprint_fills_each_input_with_its_own_nodata(tmp_path, resampled):
    # a: 40 x 50 at the origin, nodata -3; b: 30 x 30 from row 20, col 35, nodata 250
    # (half a pixel further right when resampled). The union is 50 rows x 65 cols.
    a = np.arange(40 * 50, dtype=np.int16).reshape(1, 40, 50) % 300 + 1
    b = np.arange(30 * 30, dtype=np.uint8).reshape(1, 30, 30) % 200 + 1
    shift = PIXEL / 2 if resampled else 0
    bTransform = Affine(PIXEL, 0, ORIGIN[0] + 35 * PIXEL + shift, 0, -PIXEL,
                        ORIGIN[1] - 20 * PIXEL)
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.a = writeRaster(tmp_path / "a.tif", a, nodata=-3)
    infiles.b = writeRaster(tmp_path / "b.tif", b, transform=bTransform, nodata=250)
    outfiles.outA, outfiles.outB = str(tmp_path / "outA.tif"), str(tmp_path / "outB.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(16, 16)
    controls.setFootprintType(applier.UNION)
    controls.setReferenceImage("a")
    controls.setStatsIgnore(None)
    applier.apply(bothInputs, infiles, outfiles, controls=controls)
    outA, outB = readRaster(outfiles.outA), readRaster(outfiles.outB)
    expectedA = np.full((1, 50, 65 + resampled), -3, np.int16)
    expectedA[:, :40, :50] = a
    np.testing.assert_array_equal(outA, expectedA)
    assert outB.shape == (1, 50, 65 + resampled)
    outside = np.ones(outB.shape, bool)
    outside[:, 20:, 35:] = False
    assert (outB[outside] == 250).all()
    if not resampled:
        np.testing.assert_array_equal(outB[:, 20:, 35:], b)
    else:  # nearest: every pixel is one of b's, or nodata at the half-covered edge column
        assert set(np.unique(outB[:, 20:, 36:65])) <= set(np.unique(b))


def test_per_band_nodata_with_different_regions_when_resampling(tmp_path):
    # Band 1 has nodata 5 in one square, band 2 nodata 6 in another: each band's own nodata
    # must stay out of that band's averages. Were nodata unified over bands (GDAL's
    # default), band 1's square would count as data, since band 2 has data there.
    array = np.stack([np.full((30, 30), 100, np.float32), np.full((30, 30), 200, np.float32)])
    array[0, 4:12, 4:12] = 5
    array[1, 16:26, 14:26] = 6
    half = Affine(PIXEL, 0, ORIGIN[0] + PIXEL / 2, 0, -PIXEL, ORIGIN[1] - PIXEL / 2)
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.ref = writeRaster(tmp_path / "ref.tif", np.zeros((1, 30, 30), np.float32))
    infiles.other = writeRaster(tmp_path / "other.tif", array, transform=half)
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setReferenceImage("ref")
    controls.setFootprintType(applier.BOUNDS_FROM_REFERENCE)
    controls.setResampleMethod("bilinear")
    controls.setInputNoDataValue([5, 6], "other")
    controls.setStatsIgnore(None)
    applier.apply(lambda info, i, o: setattr(o, "out", i.other), infiles, outfiles,
                  controls=controls)
    out = readRaster(outfiles.out)[:, 2:28, 2:28]  # away from the image's edge
    assert set(np.unique(out[0])) == {100, 5} and set(np.unique(out[1])) == {200, 6}
    assert (out[0, 4:8, 4:8] == 5).all() and (out[0, 16:22, 14:22] == 100).all()
    assert (out[1, 16:22, 14:22] == 6).all() and (out[1, 4:8, 4:8] == 200).all()


@pytest.mark.parametrize("override, dtype, bad", [
    (-9999, np.uint8, "-9999"), ([0, 300], np.uint8, "300"), (2.5, np.int16, "2.5"),
])
def test_input_nodata_the_dtype_cannot_hold_is_a_clear_error_before_any_block(
        tmp_path, override, dtype, bad):
    filename = writeRaster(tmp_path / "in.tif", np.ones((2, 40, 40), dtype))
    out = tmp_path / "out"
    out.mkdir()
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = filename
    outfiles.out = str(out / "out.tif")
    controls = applier.ApplierControls()
    controls.setInputNoDataValue(override, "img")
    controls.setConcurrencyStyle(applier.ConcurrencyStyle(
        numComputeWorkers=2, computeWorkerKind=applier.CW_THREADS))
    calls = []
    with pytest.raises(ValueError) as caught:
        applier.apply(lambda info, i, o: calls.append(1), infiles, outfiles, controls=controls)
    message = str(caught.value)
    for part in ("img", filename, bad, np.dtype(dtype).name):
        assert part in message
    assert calls == [] and os.listdir(out) == []
