"""Working grid: reprojection onto the reference grid and the footprint types."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterhelpers import CRS_UTM, ORIGIN, PIXEL, readRaster, writeRaster
from rasterio.enums import Resampling
from rasterio.warp import reproject

from poolparty_raster import applier


def copyBoth(info, inputs, outputs):
    outputs.ref = inputs.ref
    outputs.other = inputs.other


def run(tmp_path, ref, other, footprint=None, window=32, **controlSetters):
    infiles = applier.FilenameAssociations()
    infiles.ref, infiles.other = ref, other
    outfiles = applier.FilenameAssociations()
    outfiles.ref = str(tmp_path / "outref.tif")
    outfiles.other = str(tmp_path / "outother.tif")
    controls = applier.ApplierControls()
    controls.setWindowXsize(window)
    controls.setWindowYsize(window)
    controls.setReferenceImage(ref)
    controls.setStatsIgnore(None)
    if footprint is not None:
        controls.setFootprintType(footprint)
    for setter, args in controlSetters.items():
        getattr(controls, setter)(*args)
    applier.apply(copyBoth, infiles, outfiles, controls=controls)
    return outfiles


@pytest.mark.parametrize("window", [32, 45])
def test_reprojection_equals_whole_warp(tmp_path, window):
    ref = writeRaster(tmp_path / "ref.tif", np.ones((1, 120, 140), np.uint8))
    rng = np.random.default_rng(3)
    # A geographic-CRS input, coarser and covering the whole reference grid.
    src = rng.integers(1, 250, size=(1, 60, 80), dtype=np.uint8)
    with rasterio.open(ref) as ds:
        west, south, east, north = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    srcTransform = Affine((east - west + 0.02) / 80, 0, west - 0.01, 0,
                          -(north - south + 0.02) / 60, north + 0.01)
    other = writeRaster(tmp_path / "geo.tif", src, transform=srcTransform, crs="EPSG:4326")
    outfiles = run(tmp_path, ref, other, applier.BOUNDS_FROM_REFERENCE, window)
    expected = np.zeros((1, 120, 140), np.uint8)
    with rasterio.open(ref) as ds:
        reproject(src, expected, src_transform=srcTransform, src_crs="EPSG:4326",
                  dst_transform=ds.transform, dst_crs=ds.crs, resampling=Resampling.nearest)
    out = readRaster(outfiles.other)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def shifted(tmp_path, name, array, drow, dcol, nodata=None):
    transform = Affine(PIXEL, 0, ORIGIN[0] + dcol * PIXEL, 0, -PIXEL, ORIGIN[1] - drow * PIXEL)
    return writeRaster(tmp_path / name, array, transform=transform, nodata=nodata)


def test_footprint_intersection_and_union(tmp_path):
    a = np.arange(50 * 60, dtype=np.int16).reshape(1, 50, 60) + 1
    b = -np.arange(40 * 70, dtype=np.int16).reshape(1, 40, 70) - 1
    # b starts 10 rows down and 20 columns right of a.
    fa = shifted(tmp_path, "a.tif", a, 0, 0, nodata=0)
    fb = shifted(tmp_path, "b.tif", b, 10, 20, nodata=0)

    out = run(tmp_path, fa, fb, applier.INTERSECTION)
    with rasterio.open(out.ref) as ds:
        assert (ds.height, ds.width) == (40, 40)
        assert ds.transform == Affine(PIXEL, 0, ORIGIN[0] + 20 * PIXEL, 0, -PIXEL,
                                      ORIGIN[1] - 10 * PIXEL)
    np.testing.assert_array_equal(readRaster(out.ref), a[:, 10:50, 20:60])
    np.testing.assert_array_equal(readRaster(out.other), b[:, 0:40, 0:40])

    out = run(tmp_path, fa, fb, applier.UNION)
    with rasterio.open(out.ref) as ds:
        assert (ds.height, ds.width) == (50, 90)
        assert ds.transform == Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
    expectedA = np.zeros((1, 50, 90), np.int16)
    expectedA[:, :, :60] = a
    expectedB = np.zeros((1, 50, 90), np.int16)
    expectedB[:, 10:50, 20:90] = b
    np.testing.assert_array_equal(readRaster(out.ref), expectedA)
    np.testing.assert_array_equal(readRaster(out.other), expectedB)


def test_disjoint_inputs_intersection_fails(tmp_path):
    fa = shifted(tmp_path, "a.tif", np.ones((1, 10, 10), np.uint8), 0, 0)
    fb = shifted(tmp_path, "b.tif", np.ones((1, 10, 10), np.uint8), 0, 50)
    with pytest.raises(ValueError, match="do not overlap"):
        run(tmp_path, fa, fb)


def _warpCase(tmp_path, factor):
    """A reference grid of 30 m pixels and a float input of 30/factor m pixels covering
    it with a margin, offset by a fraction of a pixel (factor > 1: downsampling)."""
    ref = writeRaster(tmp_path / "ref.tif", np.zeros((1, 60, 70), np.float32))
    res = PIXEL / factor
    rows, cols = int(60 * factor) + 12, int(70 * factor) + 12
    transform = Affine(res, 0, ORIGIN[0] - 6 * res + 3.3, 0, -res, ORIGIN[1] + 6 * res - 2.1)
    src = np.random.default_rng(9).normal(100, 30, (1, rows, cols)).astype(np.float32)
    other = writeRaster(tmp_path / f"src{factor}.tif", src, transform=transform)
    return ref, other, src, transform


@pytest.mark.parametrize("method", ["bilinear", "cubic", "lanczos", "average"])
@pytest.mark.parametrize("factor", [2.5, 0.4])
def test_resampling_does_not_depend_on_the_window(tmp_path, method, factor):
    ref, other, src, transform = _warpCase(tmp_path, factor)
    expected = np.zeros((1, 60, 70), np.float32)
    with rasterio.open(ref) as ds:
        reproject(src, expected, src_transform=transform, src_crs=CRS_UTM,
                  dst_transform=ds.transform, dst_crs=ds.crs, resampling=Resampling[method])
    for window in (16, 45):
        out = run(tmp_path, ref, other, applier.BOUNDS_FROM_REFERENCE, window,
                  setResampleMethod=(method,))
        np.testing.assert_array_equal(readRaster(out.other), expected)


def test_overlap_margin_of_a_reprojected_input_holds_data(tmp_path):
    ref, other, src, transform = _warpCase(tmp_path, 1.3)
    o = 3
    # What the margin must hold: the input warped onto the grid grown by the overlap.
    with rasterio.open(ref) as ds:
        grown = ds.transform @ Affine.translation(-o, -o)
    expected = np.zeros((1, 60 + 2 * o, 70 + 2 * o), np.float32)
    reproject(src, expected, src_transform=transform, src_crs=CRS_UTM, dst_transform=grown,
              dst_crs=CRS_UTM, resampling=Resampling.bilinear)
    seen = {}

    def grab(info, inputs, outputs):
        b = info.blockDefn
        seen[b.top, b.left] = inputs.other.copy()
        outputs.ref = inputs.ref
        outputs.other = inputs.other
    infiles = applier.FilenameAssociations()
    infiles.ref, infiles.other = ref, other
    outfiles = applier.FilenameAssociations()
    outfiles.ref, outfiles.other = str(tmp_path / "r.tif"), str(tmp_path / "o.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(32, 32)
    controls.setOverlap(o)
    controls.setReferenceImage("ref")
    controls.setFootprintType(applier.BOUNDS_FROM_REFERENCE)
    controls.setResampleMethod("bilinear")
    applier.apply(grab, infiles, outfiles, controls=controls)
    for (top, left), block in seen.items():
        rows, cols = block.shape[1:]
        np.testing.assert_array_equal(block, expected[:, top:top + rows, left:left + cols])
    assert (0, 0) in seen and seen[0, 0][0, 0, 0] != 0  # the corner margin is data
