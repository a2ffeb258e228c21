"""Writing and reading the small synthetic rasters of the applier tests."""
from __future__ import annotations

import numpy as np
import rasterio
from affine import Affine

CRS_UTM = "EPSG:32755"
ORIGIN = (500000.0, 6000000.0)
PIXEL = 30.0


def writeRaster(path, array, transform=None, crs=CRS_UTM, nodata=None, **options):
    """Write (bands, rows, cols) ``array`` as a GTiff; the default grid has 30 m pixels
    with its top-left corner at ORIGIN."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[np.newaxis]
    transform = transform or Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, crs=crs, transform=transform,
                       nodata=nodata, **options) as ds:
        ds.write(array)
    return str(path)


def readRaster(path):
    with rasterio.open(path) as ds:
        return ds.read()


