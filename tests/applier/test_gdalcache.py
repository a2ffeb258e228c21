"""GDAL's block cache is bounded by what the blocks re-read, in the driver and the workers,
unless the user chose its size."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.env
from rasterhelpers import writeRaster

from poolparty_raster import applier
from poolparty_raster.applier.gdalcache import MIN_CACHE_BYTES, input_cache_bytes
from poolparty_raster.applier.grid import describe_rasters

MIB = 1024 * 1024


def _recordCache(info, inputs, outputs, otherArgs):
    otherArgs.seen.add(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
    outputs.out = inputs.img


def _cachesSeen(tmp_path, configure=None, overlap=0):
    infiles, outfiles = applier.FilenameAssociations(), applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "in.tif", np.ones((1, 300, 300), np.float32),
                              TILED="YES", BLOCKXSIZE=256, BLOCKYSIZE=256)
    outfiles.out = str(tmp_path / "out.tif")
    controls = applier.ApplierControls()
    controls.setOverlap(overlap)
    controls.setWindowSize(128, 128)
    if configure is not None:
        configure(controls)
    otherArgs = applier.OtherInputs()
    otherArgs.seen = set()
    result = applier.apply(_recordCache, infiles, outfiles, otherArgs, controls=controls)
    return set().union(*(o.seen for o in result.otherArgsList))


def _localWorkers(controls):
    controls.setConcurrencyStyle(applier.ConcurrencyStyle(
        numComputeWorkers=2, computeWorkerKind=applier.CW_SUBPROC,
        computeWorkerExtraParams={"progress": False}))


@pytest.mark.parametrize("configure", [None, _localWorkers], ids=["in-process", "LocalPool"])
def test_the_cache_is_capped_to_what_the_blocks_reread(tmp_path, configure, monkeypatch):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    gdalDefault = int(rasterio.env.get_gdal_config("GDAL_CACHEMAX") or 0)
    seen = _cachesSeen(tmp_path, configure)
    # 128-pixel windows over 256-pixel tiles share tiles: a row of them is kept, not 5 % of
    # RAM; in-process the cap grows by the output's share once that is created.
    assert seen and all(MIN_CACHE_BYTES <= int(cap) <= 16 * MIB for cap in seen)
    assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") in (None, gdalDefault, str(gdalDefault))


def test_a_cache_size_the_user_chose_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_CACHEMAX", "300")
    assert _cachesSeen(tmp_path, _localWorkers) == {300 * MIB}
    monkeypatch.delenv("GDAL_CACHEMAX")
    with rasterio.Env(GDAL_CACHEMAX=123 * MIB):
        assert _cachesSeen(tmp_path) == {123 * MIB}


def test_the_cap_covers_the_tiles_windows_share(tmp_path):
    path = writeRaster(tmp_path / "t.tif", np.zeros((2, 1000, 4000), np.int16),
                       TILED="YES", BLOCKXSIZE=256, BLOCKYSIZE=256)
    info = describe_rasters([path])[path]
    grid = info.grid
    aligned = input_cache_bytes([info], grid, 256, 256, 0)
    overlapping = input_cache_bytes([info], grid, 256, 256, 2)
    assert aligned == 2 * 256 * 256 * 4  # one window, both bands, twice over
    # With a margin, the tiles of a whole row of windows (three tile rows deep) are re-read.
    assert overlapping >= 4000 * 3 * 256 * 4
    assert input_cache_bytes([info, info], grid, 256, 256, 2) == 2 * overlapping


def _cacheSetting(_):
    return rasterio.env.get_gdal_config("GDAL_CACHEMAX")


def test_the_cap_ends_with_each_task_in_a_pool_process_of_the_callers(tmp_path, monkeypatch):
    # Their processes run other work after the apply: the cap must not stay with them (this
    # package's own workers, which end with the map, keep it for their life).
    import multiprocessing
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with multiprocessing.Pool(1) as pool:
        before = pool.map(_cacheSetting, [0])
        seen = _cachesSeen(tmp_path, lambda controls: controls.setPool(pool))
        after = pool.map(_cacheSetting, [0])
    assert seen and all(MIN_CACHE_BYTES <= int(cap) <= 16 * MIB for cap in seen)
    assert after == before
