"""Block-wise results equal whole-array numpy results, for any block size and overlap."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterhelpers import readRaster, writeRaster

from poolparty_raster import applier


def average(info, inputs, outputs):
    outputs.avg = (inputs.a + inputs.b) / 2


@pytest.mark.parametrize("xsize, ysize", [(256, 256), (64, 32), (37, 23), (16, 150), (203, 1)])
def test_average_of_ramps(ramps, tmp_path, xsize, ysize):
    fa, fb, a, b = ramps
    infiles = applier.FilenameAssociations()
    infiles.a, infiles.b = fa, fb
    outfiles = applier.FilenameAssociations()
    outfiles.avg = str(tmp_path / "avg.tif")
    controls = applier.ApplierControls()
    controls.setWindowXsize(xsize)
    controls.setWindowYsize(ysize)
    applier.apply(average, infiles, outfiles, controls=controls)
    out = readRaster(outfiles.avg)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (a + b) / 2)


def focalMax(info, inputs, outputs):
    img = inputs.img
    o = info.getOverlapSize()
    rows, cols = img.shape[1] - 2 * o, img.shape[2] - 2 * o
    result = np.full_like(img, np.iinfo(img.dtype).min)
    for dr in range(-o, o + 1):
        for dc in range(-o, o + 1):
            shifted = img[:, o + dr:o + dr + rows, o + dc:o + dc + cols]
            inner = result[:, o:o + rows, o:o + cols]
            np.maximum(inner, shifted, out=inner)
    outputs.out = result


@pytest.mark.parametrize("window", [16, 32, 50])
def test_focal_maximum_with_overlap(randomImage, tmp_path, window):
    filename, array = randomImage
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "max.tif")
    controls = applier.ApplierControls()
    controls.setOverlap(2)
    controls.setWindowXsize(window)
    controls.setWindowYsize(window)
    applier.apply(focalMax, infiles, outfiles, controls=controls)
    # Outside the image the reader pads with 0 (the file has no nodata).
    padded = np.pad(array, ((0, 0), (2, 2), (2, 2)), constant_values=0)
    expected = np.max([padded[:, 2 + dr:2 + dr + 97, 2 + dc:2 + dc + 131]
                       for dr in range(-2, 3) for dc in range(-2, 3)], axis=0)
    np.testing.assert_array_equal(readRaster(outfiles.out), expected)


def listsAndBands(info, inputs, outputs):
    total = sum(img.astype(np.float64) for img in inputs.imgs)
    outputs.total = total
    outputs.parts = [total[:1].astype(np.int32), np.stack([inputs.single[0], inputs.single[0]])]


def test_lists_of_inputs_several_outputs_multiband(randomImage, tmp_path):
    filename, array = randomImage
    second = writeRaster(tmp_path / "second.tif", (array * 2).astype(np.int16))
    single = writeRaster(tmp_path / "single.tif", np.arange(97 * 131, dtype=np.uint16)
                         .reshape(1, 97, 131))
    infiles = applier.FilenameAssociations()
    infiles.imgs = [filename, second]
    infiles.single = single
    outfiles = applier.FilenameAssociations()
    outfiles.total = str(tmp_path / "total.tif")
    outfiles.parts = [str(tmp_path / "p0.tif"), str(tmp_path / "p1.tif")]
    controls = applier.ApplierControls()
    controls.setWindowXsize(48)
    controls.setWindowYsize(40)
    applier.apply(listsAndBands, infiles, outfiles, controls=controls)
    total = array.astype(np.float64) * 3
    np.testing.assert_array_equal(readRaster(outfiles.total), total)
    np.testing.assert_array_equal(readRaster(outfiles.parts[0]), total[:1].astype(np.int32))
    ramp = np.arange(97 * 131, dtype=np.uint16).reshape(1, 97, 131)
    np.testing.assert_array_equal(readRaster(outfiles.parts[1]), np.concatenate([ramp, ramp]))


DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
          "float32", "float64", "complex64", "complex128"]


def castTo(info, inputs, outputs, otherArgs):
    outputs.out = inputs.img.astype(otherArgs.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_gtiff_dtype(tmp_path, dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(np.float32)
    array = rng.uniform(max(info.min, -1e6), min(info.max, 1e6), size=(2, 40, 35))
    array = array.astype(dtype)
    filename = writeRaster(tmp_path / "in.tif", array)
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / "out.tif")
    other = applier.OtherInputs()
    other.dtype = dtype
    controls = applier.ApplierControls()
    controls.setWindowXsize(16)
    controls.setWindowYsize(16)
    applier.apply(castTo, infiles, outfiles, other, controls)
    out = readRaster(outfiles.out)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)
    with rasterio.open(outfiles.out) as ds:
        assert ds.block_shapes[0] == (16, 16)
        assert ds.compression.name.upper() == "DEFLATE"


def coords(info, inputs, outputs):
    x, y = info.getBlockCoordArrays()
    outputs.x = x[np.newaxis]
    outputs.y = y[np.newaxis]
    assert info.getFilenameFor(inputs.img).endswith("rand.tif")
    (col, row) = info.getPixColRow(0, 0)
    assert (row, col) == (info.blockDefn.top, info.blockDefn.left)
    assert info.isFirstBlock() == ((row, col) == (0, 0))


def test_block_coordinates(randomImage, tmp_path):
    filename, _ = randomImage
    infiles = applier.FilenameAssociations()
    infiles.img = filename
    outfiles = applier.FilenameAssociations()
    outfiles.x = str(tmp_path / "x.tif")
    outfiles.y = str(tmp_path / "y.tif")
    controls = applier.ApplierControls()
    controls.setWindowXsize(32)
    controls.setWindowYsize(32)
    controls.setOverlap(1)
    controls.setStatsIgnore(None)
    applier.apply(coords, infiles, outfiles, controls=controls)
    with rasterio.open(filename) as ds:
        rows, cols = np.mgrid[0:97, 0:131]
        ex, ey = ds.transform @ (cols + 0.5, rows + 0.5)
    np.testing.assert_array_equal(readRaster(outfiles.x)[0], ex)
    np.testing.assert_array_equal(readRaster(outfiles.y)[0], ey)
