"""The steps of finishing an output that open it again once its blocks are written and it
is closed (still under its temporary name): the histograms that need a second pass over the
pixels, and the user's setCallBeforeClose callback with a GDAL Dataset."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import rasterio

from poolparty_raster.applier.gdalbindings import require_gdal
from poolparty_raster.applier.histogram import BinCounter, HistogramPlan, histogram_tags


def write_second_pass_histograms(path: str, bands: list[tuple[int, HistogramPlan]],
                                 ignore: float | None, dtype: np.dtype) -> None:
    """Count the given bands (1-based numbers, with their plans) of the file at ``path``,
    reading it window by window along its own blocks, and write their histogram tags."""
    counters = {band_num: BinCounter(plan, ignore) for band_num, plan in bands}
    indexes = list(counters)
    with rasterio.open(path, "r+") as ds:
        for _, window in ds.block_windows(indexes[0]):
            for band_num, array in zip(indexes, ds.read(indexes, window=window)):
                counters[band_num].add(array)
        for band_num, counter in counters.items():
            ds.update_tags(band_num, **histogram_tags(counter.plan, counter.hist, dtype))


def call_with_gdal_dataset(path: str, func: Callable[..., Any], args: tuple = ()) -> None:
    """``func(dataset, *args)`` with the output opened for update by GDAL's own bindings
    (what RIOS hands its callbacks: set metadata, a colour table, a raster attribute
    table); closed before the output is moved into place."""
    gdal = require_gdal("setCallBeforeClose")
    ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_UPDATE)
    if ds is None:
        raise OSError(f"GDAL's Python bindings cannot open {path} for update: "
                      f"{gdal.GetLastErrorMsg()}")
    try:
        func(ds, *args)
        ds.FlushCache()
    finally:
        del ds  # the last reference: what closes a GDAL Dataset in every GDAL version
