"""Output band names (setLayerNames) and automatic colour tables of thematic outputs
(setAutoColorTableType), read back with rasterio (GDAL's band descriptions and colour
tables)."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import rasterio
from rasterhelpers import writeRaster

from poolparty_raster import applier

HAVE_OSGEO = importlib.util.find_spec("osgeo") is not None
CLASSES = (np.arange(60 * 50).reshape(1, 60, 50) % 10).astype(np.int16)


def copyAs(dtype):
    def copy(info, inputs, outputs):
        outputs.out = inputs.img.astype(dtype)
    return copy


def runCopy(tmp_path, name, dtype=np.int16, bands=1, **setters):
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "classes.tif", np.repeat(CLASSES, bands, axis=0))
    outfiles = applier.FilenameAssociations()
    outfiles.out = str(tmp_path / name)
    controls = applier.ApplierControls()
    controls.setWindowSize(32, 16)
    for setter, args in setters.items():
        getattr(controls, setter)(*args)
    applier.apply(copyAs(dtype), infiles, outfiles, controls=controls)
    return outfiles.out


@pytest.mark.parametrize("name", ["out.tif", "out.img"])
def test_layer_names_become_band_descriptions(tmp_path, name):
    path = runCopy(tmp_path, name, bands=3, setLayerNames=(["red", "green", "blue", "spare"],))
    with rasterio.open(path) as ds:
        assert ds.descriptions == ("red", "green", "blue")


def test_fewer_layer_names_than_bands_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="2 layer names .* for 3 bands"):
        runCopy(tmp_path, "out.tif", bands=3, setLayerNames=(["a", "b"],))
    assert not (tmp_path / "out.tif").exists()


def colorTable(path):
    with rasterio.open(path) as ds:
        return ds.colormap(1)


@pytest.mark.parametrize("name, dtype", [("out.img", np.int16), ("out.tif", np.uint8),
                                         ("out.tif", np.uint16)])
def test_a_gray_table_runs_black_to_white_over_the_classes(tmp_path, name, dtype):
    path = runCopy(tmp_path, name, dtype, setThematic=(True,), setAutoColorTableType=("gray",))
    table = colorTable(path)
    grays = [table[v] for v in range(10)]
    assert grays[0][:3] == (0, 0, 0) and grays[9] == (255, 255, 255, 255)
    levels = [r for r, g, b, a in grays]
    assert levels == sorted(levels) and len(set(levels)) == 10
    # A TIFF palette has no alpha: GDAL shows the nodata class (0, the default
    # setStatsIgnore) transparent.
    assert all(r == g == b and a == 255 for r, g, b, a in grays[1:])


def test_a_rainbow_runs_red_green_blue(tmp_path):
    path = runCopy(tmp_path, "out.img", setThematic=(True,),
                   setAutoColorTableType=("rainbow", "out"))
    table = colorTable(path)
    assert table[0] == (255, 0, 0, 255)
    assert table[5] == (0, 255, 0, 255)
    assert table[9] == (0, 0, 255, 255)


def test_random_tables_are_opaque_and_cover_every_class(tmp_path):
    path = runCopy(tmp_path, "out.img", setThematic=(True,), setAutoColorTableType=("random",))
    table = colorTable(path)
    assert len(table) == 10 and all(rgba[3] == 255 for rgba in table.values())


def test_athematic_outputs_get_no_table(tmp_path):
    path = runCopy(tmp_path, "out.img", setAutoColorTableType=("gray",))
    with pytest.raises(ValueError):
        colorTable(path)


def test_the_site_variable_sets_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("RIOS_DFLT_AUTOCOLORTABLETYPE", "gray")
    path = runCopy(tmp_path, "out.img", setThematic=(True,))
    assert colorTable(path)[9] == (255, 255, 255, 255)


def test_without_gdal_bindings_an_attribute_table_output_is_refused_first(tmp_path,
                                                                          monkeypatch):
    """A GTiff of Int16 holds no colour table: the table goes into a raster attribute table
    through GDAL's bindings, and their absence is an error before anything is written."""
    monkeypatch.setitem(sys.modules, "osgeo", None)  # as if not installed
    with pytest.raises(ImportError, match=r"GTiff of int16.*poolparty_raster\[gdal\]"):
        runCopy(tmp_path, "out.tif", np.int16, setThematic=(True,),
                setAutoColorTableType=("gray",))
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.skipif(not HAVE_OSGEO, reason="GDAL's Python bindings (osgeo) are not installed")
def test_other_outputs_get_the_table_as_attribute_table_columns(tmp_path):
    from osgeo import gdal
    path = runCopy(tmp_path, "out.tif", np.int16, setThematic=(True,),
                   setAutoColorTableType=("gray",))
    ds = gdal.Open(path)  # kept: a band outlives its dataset only in newer GDALs
    rat = ds.GetRasterBand(1).GetDefaultRAT()
    columns = {rat.GetUsageOfCol(c): rat.ReadAsArray(c) for c in range(rat.GetColumnCount())}
    grays = np.linspace(0, 255, 10).astype(np.uint8)
    for usage in (gdal.GFU_Red, gdal.GFU_Green, gdal.GFU_Blue):
        np.testing.assert_array_equal(columns[usage], grays)
    np.testing.assert_array_equal(columns[gdal.GFU_Alpha], np.full(10, 255))


def test_an_unknown_table_type_is_refused():
    with pytest.raises(ValueError, match="'pastel'; one of rainbow, gray, random"):
        applier.ApplierControls().setAutoColorTableType("pastel")
