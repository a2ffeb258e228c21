"""NDVI of a synthetic 4-band image with poolparty_raster's RIOS-style applier.

Makes its own input (red and near-infrared bands, 30 m UTM pixels, 0 = nodata) in a
temporary directory, computes NDVI block by block on a LocalPool of two long-lived worker
processes (``numComputeWorkers=2`` means workers mode: each claims tasks until none is left),
and checks the result against numpy.

    python examples/raster_ndvi.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from poolparty_raster import applier

NODATA = 0
NDVI_NODATA = -2.0  # outside NDVI's range [-1, 1]


def ndvi(info, inputs, outputs, otherArgs):
    """Bands are 1-based in the file, 0-based in the (bands, rows, cols) array."""
    red = inputs.image[otherArgs.redBand - 1].astype(np.float32)
    nir = inputs.image[otherArgs.nirBand - 1].astype(np.float32)
    valid = (red != NODATA) & (nir != NODATA) & (red + nir > 0)
    result = np.full(red.shape, NDVI_NODATA, dtype=np.float32)
    result[valid] = (nir[valid] - red[valid]) / (nir[valid] + red[valid])
    outputs.ndvi = result[np.newaxis]


def makeImage(path: Path) -> np.ndarray:
    """A 4-band uint16 image, 600 rows x 800 cols: vegetation on the left, bare ground on
    the right, noise, and a nodata stripe."""
    rng = np.random.default_rng(0)
    rows, cols = 600, 800
    vegetation = np.linspace(1.0, 0.0, cols)[np.newaxis, :].repeat(rows, 0)
    image = np.empty((4, rows, cols), np.uint16)
    image[0] = 800 + rng.integers(0, 50, (rows, cols))                 # blue
    image[1] = 900 + rng.integers(0, 50, (rows, cols))                 # green
    image[2] = (2000 - 1500 * vegetation + rng.integers(0, 100, (rows, cols))).astype(np.uint16)
    image[3] = (2000 + 3000 * vegetation + rng.integers(0, 100, (rows, cols))).astype(np.uint16)
    image[:, 250:260, :] = NODATA
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=4,
                       dtype="uint16", crs="EPSG:32755", nodata=NODATA,
                       transform=Affine(30, 0, 500000, 0, -30, 6000000)) as ds:
        ds.write(image)
    return image


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ndvi_example_"))
    image = makeImage(workdir / "image.tif")

    infiles = applier.FilenameAssociations()
    infiles.image = str(workdir / "image.tif")
    outfiles = applier.FilenameAssociations()
    outfiles.ndvi = str(workdir / "ndvi.tif")
    otherArgs = applier.OtherInputs()
    otherArgs.redBand, otherArgs.nirBand = 3, 4
    controls = applier.ApplierControls()
    controls.setStatsIgnore(NDVI_NODATA)
    controls.setWindowXsize(128)
    controls.setWindowYsize(128)
    controls.setConcurrencyStyle(applier.ConcurrencyStyle(
        numComputeWorkers=2, computeWorkerKind=applier.CW_SUBPROC,
        computeWorkerExtraParams={"work_dir": str(workdir / "work"), "progress": False}))
    how = "LocalPool, 2 worker processes (workers mode)"

    result = applier.apply(ndvi, infiles, outfiles, otherArgs, controls)

    red, nir = image[2].astype(np.float32), image[3].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where((red != NODATA) & (nir != NODATA) & (red + nir > 0),
                            (nir - red) / (nir + red), NDVI_NODATA).astype(np.float32)
    with rasterio.open(outfiles.ndvi) as ds:
        written = ds.read(1)
        mean = ds.tags(1)["STATISTICS_MEAN"]
    print(f"ran {how}; NDVI written to {outfiles.ndvi}")
    print(f"check: matches numpy: {np.array_equal(written, expected)}, "
          f"mean NDVI {float(mean):.3f}, {len(result.otherArgsList)} tasks")


if __name__ == "__main__":
    main()
