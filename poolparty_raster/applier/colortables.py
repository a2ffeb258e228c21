"""Automatic colour tables of thematic outputs (RIOS's setAutoColorTableType): one colour per
class from 0 to the band's maximum, in one of RIOS's three kinds.

Where the table goes: an HFA (``.img``) band keeps it in its layer's colour columns, which is
where RIOS writes it, and a GTiff band of Byte or UInt16 as the TIFF's palette, both
written with rasterio as the band's GDAL colour table. Other outputs (a GTiff of Int16,
Float32, ...) get it as RIOS writes every table, as the Red, Green, Blue and Alpha columns
of the band's raster attribute table (in the ``.aux.xml``), which needs GDAL's own Python
bindings: without them the output is refused at its first block, before any work is
lost, with what to install."""
from __future__ import annotations

from typing import Any

import numpy as np

from poolparty_raster.applier.gdalbindings import require_gdal

# RIOS's names for the kinds of table (rios.rat.genColorTable).
COLOR_TABLE_TYPES = ("rainbow", "gray", "random")
# The dtypes a GTiff palette can be attached to (TIFF's PhotometricInterpretation=Palette).
_GTIFF_PALETTE_DTYPES = ("uint8", "uint16")


def check_color_table_type(kind: str | None) -> str | None:
    """``kind`` if it is None or one of COLOR_TABLE_TYPES, else a ValueError."""
    if kind is not None and kind not in COLOR_TABLE_TYPES:
        raise ValueError(f"unknown colour table type {kind!r}; one of "
                         f"{', '.join(COLOR_TABLE_TYPES)} (or None: no colour table)")
    return kind


def table_writer(driver: str, dtype: np.dtype, output_name: str) -> str:
    """How an output of this driver and dtype gets its table: "colormap" (rasterio) or
    "rat" (GDAL's bindings; an ImportError saying what to install where they are missing)."""
    if driver == "HFA" and np.dtype(dtype).kind in "iu":
        return "colormap"
    if driver in ("GTiff", "COG") and np.dtype(dtype).name in _GTIFF_PALETTE_DTYPES:
        return "colormap"
    require_gdal(f"output {output_name}: setAutoColorTableType on {driver} of "
                 f"{np.dtype(dtype).name} (no colour table there: it is written as a raster "
                 "attribute table, as RIOS writes it)")
    return "rat"


def color_table(kind: str, num_entries: int) -> np.ndarray:
    """(num_entries, 4) uint8 red, green, blue, alpha; every entry opaque. ``gray`` runs
    from black to white; ``rainbow`` from red through green (at the middle entry) to blue;
    ``random`` gives each entry a random colour (two may coincide)."""
    table = np.full((num_entries, 4), 255, dtype=np.uint8)
    if kind == "gray":
        table[:, :3] = np.linspace(0, 255, num_entries).astype(np.uint8)[:, None]
    elif kind == "rainbow":
        half = num_entries // 2
        falling, rising = np.linspace(255, 0, half), np.linspace(0, 255, half)
        table[:half, 0], table[:half, 1], table[:half, 2] = falling, rising, 0
        rest = num_entries - half
        table[half:, 0] = 0
        table[half:, 1], table[half:, 2] = np.linspace(255, 0, rest), np.linspace(0, 255, rest)
    else:
        table[:, :3] = np.random.default_rng().integers(0, 256, (num_entries, 3))
    return table


def write_color_tables(ds: Any, kind: str, maxima: list[float]) -> None:
    """A table of ``kind`` on each band of the open rasterio dataset ``ds``, with an entry
    per class from 0 to the band's maximum (``maxima``, one per band)."""
    for band_num, maximum in enumerate(maxima, start=1):
        table = color_table(kind, int(maximum) + 1)
        ds.write_colormap(band_num, {value: tuple(int(c) for c in rgba)
                                     for value, rgba in enumerate(table)})


def write_rat_color_tables(path: str, kind: str, maxima: list[float]) -> None:
    """The same tables as the Red, Green, Blue and Alpha columns (a row per class) of each
    band's raster attribute table, in the closed file at ``path``, through GDAL's bindings;
    columns of those usages already in a band's table are overwritten."""
    gdal = require_gdal("setAutoColorTableType")
    ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_UPDATE)
    if ds is None:
        raise OSError(f"GDAL's Python bindings cannot open {path} for update: "
                      f"{gdal.GetLastErrorMsg()}")
    usages = ((gdal.GFU_Red, "Red"), (gdal.GFU_Green, "Green"), (gdal.GFU_Blue, "Blue"),
              (gdal.GFU_Alpha, "Alpha"))
    try:
        for band_num, maximum in enumerate(maxima, start=1):
            band = ds.GetRasterBand(band_num)
            table = color_table(kind, int(maximum) + 1)
            rat = band.GetDefaultRAT() or gdal.RasterAttributeTable()
            rat.SetRowCount(max(rat.GetRowCount(), len(table)))
            for component, (usage, name) in enumerate(usages):
                column = rat.GetColOfUsage(usage)
                if column < 0:
                    rat.CreateColumn(name, gdal.GFT_Integer, usage)
                    column = rat.GetColumnCount() - 1
                rat.WriteArray(table[:, component].astype(np.int32), column)
            band.SetDefaultRAT(rat)
        ds.FlushCache()
    finally:
        del ds  # the last reference: what closes a GDAL Dataset in every GDAL version
