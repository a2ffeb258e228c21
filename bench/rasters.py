"""Test rasters made deterministically from a fixed seed, cached in bench/data/ (git-ignored),
and the codecs every raster benchmark is run with.

The terrain is smooth waves plus a little noise so that it compresses like a real DEM (pure
noise would not compress, a constant would compress absurdly well)."""
from __future__ import annotations

import os

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from bench.common import ROOT

DATA_DIR = os.path.join(ROOT, "bench", "data")
SEED = 20261109
TILE = 256
TILED = {"TILED": "YES", "BLOCKXSIZE": str(TILE), "BLOCKYSIZE": str(TILE)}
# The codecs of the issue; plain DEFLATE is GDAL's default level 6 without a predictor.
CODECS: dict[str, dict[str, str]] = {
    "NONE": {},
    "DEFLATE": {"COMPRESS": "DEFLATE"},
    "DEFLATE ZLEVEL=1 PREDICTOR=2": {"COMPRESS": "DEFLATE", "ZLEVEL": "1", "PREDICTOR": "2"},
    "ZSTD level 1": {"COMPRESS": "ZSTD", "ZSTD_LEVEL": "1", "PREDICTOR": "2"},
}
# 6400 x 6400 = 41 Mpix, as the "around 40 Mpix" and the measured I/O table.
FULL_SIDE = 6400
QUICK_SIDE = 1024


def creation_options(codec: str) -> dict[str, str]:
    return {**TILED, **CODECS[codec]}


def _terrain(dtype: str, top: int, nrows: int, ncols: int) -> np.ndarray:
    """Rows top..top+nrows of the raster; each strip has its own seeded generator, so the
    pixels do not depend on how the raster is cut."""
    rng = np.random.default_rng([SEED, top])
    y, x = np.mgrid[top:top + nrows, 0:ncols].astype(np.float32)
    z = (800 + 300 * np.sin(x / 517 + 0.3) * np.cos(y / 389 + 1.1)
         + 120 * np.sin((x + y) / 97) + 40 * np.sin(x / 23) * np.sin(y / 31)
         + rng.normal(0, 1.5, size=(nrows, ncols)).astype(np.float32))
    if dtype == "int16":
        return np.rint(z).astype(np.int16)[np.newaxis]
    return (z / 10).astype(np.float32)[np.newaxis]


def make(dtype: str, side: int, codec: str = "NONE") -> str:
    """Path of the ``side`` x ``side`` raster of ``dtype`` stored with ``codec``, made on
    first use (written under a temporary name and renamed, so a killed run leaves no
    half-made raster that a later run would trust)."""
    os.makedirs(DATA_DIR, exist_ok=True)
    slug = codec.replace(" ", "_").replace("=", "")
    path = os.path.join(DATA_DIR, f"{dtype}_{side}x{side}_seed{SEED}_{slug}.tif")
    if os.path.exists(path):
        return path
    tmp = path + ".partial.tif"
    if codec == "NONE":
        profile = dict(driver="GTiff", width=side, height=side, count=1, dtype=dtype,
                       crs=CRS.from_epsg(32633), transform=from_origin(500000, 6000000, 10, 10),
                       **creation_options(codec))
        with rasterio.open(tmp, "w", **profile) as dst:
            for top in range(0, side, TILE):
                nrows = min(TILE, side - top)
                dst.write(_terrain(dtype, top, nrows, side), window=Window(0, top, side, nrows))
    else:
        rasterio.shutil.copy(make(dtype, side), tmp, driver="GTiff", **creation_options(codec))
    os.replace(tmp, path)
    return path


def windows(width: int, height: int, size: int = TILE) -> list[Window]:
    return [Window(left, top, min(size, width - left), min(size, height - top))
            for top in range(0, height, size) for left in range(0, width, size)]


def floor_read(src_path: str) -> None:
    """The read floor: every tile-aligned window decoded, nothing else."""
    with rasterio.open(src_path) as src:
        for window in windows(src.width, src.height):
            src.read(window=window)


def floor_copy(src_path: str, dst_path: str, options: dict[str, str]) -> None:
    """The read+write floor: a plain rasterio window loop, windows aligned with the tiles."""
    with rasterio.open(src_path) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=src.transform, **options)
        with rasterio.open(dst_path, "w", **profile) as dst:
            for window in windows(src.width, src.height):
                dst.write(src.read(window=window), window=window)
