"""Vector inputs: features burnt onto each block's window equal GDAL's rasteriser run on the
whole image (rasterio.features.rasterize), for every burn option, in every way of running."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import rasterio.features
from affine import Affine
from rasterhelpers import CRS_UTM, ORIGIN, PIXEL, readRaster, writeRaster
from rasterio.warp import transform_geom
from test_concurrency import _configure

from poolparty_raster import applier

MISSING = [m for m in ("pyogrio", "shapely") if importlib.util.find_spec(m) is None]
needs_ogr = pytest.mark.skipif(bool(MISSING), reason=f"vector inputs need {', '.join(MISSING)}"
                               " (pip install 'poolparty_raster[vector]')")
ROWS, COLS = 150, 203
GRID = Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])


def world(col, row):
    """World (x, y) of a fractional (col, row) of the test grid."""
    return GRID @ (col, row)


def polygon(c0, r0, c1, r1):
    (x0, y0), (x1, y1) = world(c0, r0), world(c1, r1)
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1),
                                                (x0, y0)]]}


# Features of varied kinds with edges off pixel boundaries, some overlapping (the later one
# is burnt over the earlier), one reaching past the raster's right edge, one past its
# left, one far outside.
FEATURES = [
    (polygon(10.3, 5.6, 70.2, 60.9), {"cls": 1, "height": 2.5}),
    (polygon(50.7, 40.2, 120.4, 149.3), {"cls": 2, "height": 7.25}),
    ({"type": "Polygon", "coordinates": [[world(150.1, 10.2), world(230.6, 30.3),
                                          world(160.4, 90.8), world(150.1, 10.2)]]},
     {"cls": 3, "height": -4.0}),
    ({"type": "LineString", "coordinates": [world(-5.2, 130.7), world(90.6, 100.1),
                                            world(140.3, 145.9)]}, {"cls": 4, "height": 1.0}),
    ({"type": "Point", "coordinates": world(180.5, 120.5)}, {"cls": 5, "height": 3.0}),
    (polygon(400.5, 10.5, 420.5, 30.5), {"cls": 6, "height": 9.0}),
]


def writeVector(path, features, crs=CRS_UTM, layer=None, append=False):
    """Write GeoJSON-like (geometry, properties) pairs with pyogrio (a layer each call)."""
    import pyogrio.raw
    import shapely
    geometries = shapely.to_wkb([shapely.geometry.shape(g) for g, _ in features])
    names = list(features[0][1])
    fields = [np.array([props[n] for _, props in features]) for n in names]
    pyogrio.raw.write(str(path), geometries, fields, names, layer=layer, crs=crs,
                      geometry_type="Unknown", append=append)
    return str(path)


def expectedBurn(features, shape=(ROWS, COLS), transform=GRID, fill=0, dtype="uint8",
                 all_touched=False, value=1, attribute=None):
    """GDAL's rasteriser over the whole image at once, in the features' order."""
    shapes = [(g, props[attribute] if attribute else value) for g, props in features]
    return rasterio.features.rasterize(shapes, out_shape=shape, transform=transform,
                                       fill=fill, dtype=dtype, all_touched=all_touched)


def copyVec(info, inputs, outputs):
    outputs.burnt = inputs.vec


def runBurn(tmp_path, vecfile, configure=None, window=(32, 16), overlap=0, func=copyVec,
            **setters):
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", np.ones((1, ROWS, COLS), np.uint8))
    infiles.vec = vecfile
    outfiles = applier.FilenameAssociations()
    outfiles.burnt = str(tmp_path / "burnt.tif")
    controls = applier.ApplierControls()
    controls.setWindowSize(*window)
    controls.setOverlap(overlap)
    controls.setStatsIgnore(None)
    for setter, args in setters.items():
        getattr(controls, setter)(*args)
    if configure is not None:
        configure(controls)
    applier.apply(func, infiles, outfiles, controls=controls)
    return readRaster(outfiles.burnt)[0]


@needs_ogr
@pytest.mark.parametrize("setters, expected", [
    ({}, {}),
    ({"setBurnValue": (-1,), "setVectorDatatype": (np.int16,), "setVectorNull": (-9,)},
     {"value": -1, "dtype": "int16", "fill": -9}),
    ({"setBurnAttribute": ("height",), "setVectorDatatype": (np.float32,)},
     {"attribute": "height", "dtype": "float32"}),
    ({"setAlltouched": (True,), "setBurnAttribute": ("cls", "vec")},
     {"all_touched": True, "attribute": "cls"}),
], ids=["defaults", "value-null-dtype", "attribute", "alltouched-per-input"])
def test_blocks_burn_as_the_whole_image(tmp_path, setters, expected):
    vecfile = writeVector(tmp_path / "features.gpkg", FEATURES)
    burnt = runBurn(tmp_path, vecfile, **setters)
    whole = expectedBurn(FEATURES, **expected)
    assert burnt.dtype == whole.dtype
    np.testing.assert_array_equal(burnt, whole)
    assert 0.1 < np.mean(burnt != expected.get("fill", 0)) < 0.9  # a test that can fail


def shiftedRight(info, inputs, outputs):
    """Each pixel's left neighbour at the overlap's distance: reads the margin."""
    o = info.getOverlapSize()
    vec = inputs.vec
    out = np.zeros_like(vec)
    out[:, :, o:] = vec[:, :, :-o]
    outputs.burnt = out


@needs_ogr
def test_overlapping_features_burn_in_the_layers_order(tmp_path):
    """A GeoPackage's spatial index hands a window's features out in its own order; the
    later feature of the layer must still win where features overlap, as when GDAL burns
    the whole layer."""
    rng = np.random.default_rng(5)
    squares = []
    for value in range(1, 201):
        c, r = rng.uniform(-10, COLS), rng.uniform(-10, ROWS)
        size = rng.uniform(5, 40)
        squares.append((polygon(c, r, c + size, r + size), {"cls": value, "height": 0.0}))
    vecfile = writeVector(tmp_path / "squares.gpkg", squares)
    burnt = runBurn(tmp_path, vecfile, setBurnAttribute=("cls",))
    np.testing.assert_array_equal(burnt, expectedBurn(squares, attribute="cls"))


@needs_ogr
def test_overlap_margin_holds_the_features_beyond_the_block(tmp_path):
    vecfile = writeVector(tmp_path / "features.gpkg", FEATURES)
    o = 3
    burnt = runBurn(tmp_path, vecfile, overlap=o, func=shiftedRight)
    # The grid grown by the margin on every side: features beyond the raster are burnt too.
    grown = expectedBurn(FEATURES, shape=(ROWS + 2 * o, COLS + 2 * o),
                         transform=GRID @ Affine.translation(-o, -o))
    np.testing.assert_array_equal(burnt, grown[o:o + ROWS, 0:COLS])
    assert burnt[:, 0].any()  # a feature reaches the left margin of the first column


@needs_ogr
@pytest.mark.parametrize("sql", ["cls IN (1, 3)", "SELECT * FROM features WHERE cls IN (1, 3)"],
                         ids=["where", "select"])
def test_filter_sql_burns_only_the_selected_features(tmp_path, sql):
    vecfile = writeVector(tmp_path / "features.gpkg", FEATURES, layer="features")
    burnt = runBurn(tmp_path, vecfile, setFilterSQL=(sql,), setBurnAttribute=("cls",))
    chosen = [f for f in FEATURES if f[1]["cls"] in (1, 3)]
    np.testing.assert_array_equal(burnt, expectedBurn(chosen, attribute="cls"))
    assert set(np.unique(burnt)) == {0, 1, 3}


@needs_ogr
def test_layers_are_chosen_by_index_or_name(tmp_path):
    vecfile = writeVector(tmp_path / "two.gpkg", FEATURES[:2], layer="first")
    writeVector(vecfile, FEATURES[2:4], layer="second", append=True)
    second = expectedBurn(FEATURES[2:4], attribute="cls")
    byIndex = runBurn(tmp_path, vecfile, setVectorlayer=(1,), setBurnAttribute=("cls",))
    byName = runBurn(tmp_path, vecfile, setVectorlayer=("second",), setBurnAttribute=("cls",))
    np.testing.assert_array_equal(byIndex, second)
    np.testing.assert_array_equal(byName, second)
    with pytest.raises(ValueError, match="no layer 'third'.*first, second"):
        runBurn(tmp_path, vecfile, setVectorlayer=("third",))
    with pytest.raises(ValueError, match="no attribute 'missing'.*cls, height"):
        runBurn(tmp_path, vecfile, setBurnAttribute=("missing",))


@needs_ogr
def test_a_layer_in_another_crs_is_reprojected_onto_the_grid(tmp_path):
    inLatLon = [(transform_geom(CRS_UTM, "EPSG:4326", g), p) for g, p in FEATURES[:4]]
    vecfile = writeVector(tmp_path / "latlon.gpkg", inLatLon, crs="EPSG:4326")
    burnt = runBurn(tmp_path, vecfile, setBurnAttribute=("cls",))
    # Independently: GDAL's OGR transformation of each geometry back to the grid's CRS.
    back = [(transform_geom("EPSG:4326", CRS_UTM, g), p) for g, p in inLatLon]
    np.testing.assert_array_equal(burnt, expectedBurn(back, attribute="cls"))


@needs_ogr
def test_vectors_do_not_shape_the_working_grid_and_may_miss_it(tmp_path):
    far = [(polygon(400.5, 10.5, 420.5, 30.5), {"cls": 6, "height": 9.0})]
    burnt = runBurn(tmp_path, writeVector(tmp_path / "far.shp", far), setVectorNull=(7,))
    assert burnt.shape == (ROWS, COLS)
    assert (burnt == 7).all()


@needs_ogr
def test_a_null_attribute_burns_zero_as_gdal_does(tmp_path):
    withNull = [(polygon(10.5, 10.5, 60.5, 60.5), {"height": 2.5}),
                (polygon(80.5, 80.5, 120.5, 120.5), {"height": np.nan})]  # written as null
    vecfile = writeVector(tmp_path / "nulls.gpkg", withNull)
    burnt = runBurn(tmp_path, vecfile, setBurnAttribute=("height",),
                    setVectorDatatype=(np.float32,), setVectorNull=(-1,))
    asZero = [withNull[0], (withNull[1][0], {"height": 0.0})]
    np.testing.assert_array_equal(burnt, expectedBurn(asZero, attribute="height",
                                                      dtype="float32", fill=-1))
    assert (burnt == 0).any()


def stackVectors(info, inputs, outputs):
    outputs.burnt = np.concatenate([inputs.roads, inputs.parks])


@needs_ogr
def test_options_given_a_vector_name_are_that_inputs_alone(tmp_path):
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", np.ones((1, ROWS, COLS), np.uint8))
    infiles.roads = writeVector(tmp_path / "roads.gpkg", FEATURES[:2])
    infiles.parks = writeVector(tmp_path / "parks.gpkg", FEATURES[2:4])
    outfiles = applier.FilenameAssociations()
    outfiles.burnt = str(tmp_path / "burnt.tif")
    controls = applier.ApplierControls()
    controls.setStatsIgnore(None)
    controls.setBurnValue(5, "roads")
    controls.setVectorNull(9)          # every vector input's default
    controls.setVectorNull(2, "parks")
    applier.apply(stackVectors, infiles, outfiles, controls=controls)
    roads, parks = readRaster(outfiles.burnt)
    np.testing.assert_array_equal(roads, expectedBurn(FEATURES[:2], value=5, fill=9))
    np.testing.assert_array_equal(parks, expectedBurn(FEATURES[2:4], value=1, fill=2))


def infoOfVec(info, inputs, outputs, otherArgs):
    otherArgs.nodata = info.getNoDataValueFor(inputs.vec)
    otherArgs.filename = info.getFilenameFor(inputs.vec)
    outputs.burnt = inputs.vec


@needs_ogr
def test_info_gives_the_vector_null_and_filename(tmp_path):
    vecfile = writeVector(tmp_path / "polygons.shp", FEATURES[:3])
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", np.ones((1, 20, 20), np.uint8))
    infiles.vec = vecfile
    outfiles = applier.FilenameAssociations()
    outfiles.burnt = str(tmp_path / "burnt.tif")
    controls = applier.ApplierControls()
    controls.setVectorNull(5)
    otherArgs = applier.OtherInputs()
    applier.apply(infoOfVec, infiles, outfiles, otherArgs, controls)
    assert otherArgs.nodata == 5 and otherArgs.nodata.dtype == np.uint8
    assert otherArgs.filename == vecfile


@needs_ogr
def test_only_vector_inputs_need_a_reference_grid(tmp_path):
    vecfile = writeVector(tmp_path / "features.gpkg", FEATURES)
    infiles = applier.FilenameAssociations()
    infiles.vec = vecfile
    outfiles = applier.FilenameAssociations()
    outfiles.burnt = str(tmp_path / "burnt.tif")
    controls = applier.ApplierControls()
    with pytest.raises(ValueError, match="at least one raster input"):
        applier.apply(copyVec, infiles, outfiles, controls=controls)
    controls.setReferenceImage(writeRaster(tmp_path / "ref.tif", np.zeros((1, ROWS, COLS),
                                                                          np.uint8)))
    controls.setStatsIgnore(None)
    applier.apply(copyVec, infiles, outfiles, controls=controls)
    np.testing.assert_array_equal(readRaster(outfiles.burnt)[0], expectedBurn(FEATURES))


@pytest.fixture(params=["threads", "subproc-workers", "subproc-array", "mp-pool",
                        "dummy-slurm", "real-slurm", "real-sge"])
def configureVectorRun(request):
    yield from _configure(request)


@needs_ogr
def test_every_way_of_running_burns_the_same(tmp_path, configureVectorRun):
    vecfile = writeVector(tmp_path / "features.gpkg", FEATURES)
    burnt = runBurn(tmp_path, vecfile, configure=configureVectorRun, overlap=1,
                    setBurnAttribute=("height",), setVectorDatatype=(np.float32,))
    whole = expectedBurn(FEATURES, attribute="height", dtype="float32")
    np.testing.assert_array_equal(burnt, whole)


def test_without_the_ogr_binding_a_vector_input_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyogrio", None)  # as if not installed
    notRaster = tmp_path / "roads.shp"
    notRaster.write_text("not a raster")
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", np.ones((1, 20, 20), np.uint8))
    infiles.vec = str(notRaster)
    outfiles = applier.FilenameAssociations()
    outfiles.burnt = str(tmp_path / "burnt.tif")
    with pytest.raises(ImportError, match=r"roads\.shp.*pip install 'poolparty_raster\[vector\]'"):
        applier.apply(copyVec, infiles, outfiles)
    assert not (tmp_path / "burnt.tif").exists()


@needs_ogr
def test_a_file_neither_raster_nor_vector_gives_rasterios_error(tmp_path):
    notAnything = tmp_path / "notes.txt"
    notAnything.write_text("neither")
    infiles = applier.FilenameAssociations()
    infiles.img = writeRaster(tmp_path / "img.tif", np.ones((1, 20, 20), np.uint8))
    infiles.vec = str(notAnything)
    outfiles = applier.FilenameAssociations()
    outfiles.burnt = str(tmp_path / "burnt.tif")
    with pytest.raises(rasterio.errors.RasterioIOError, match="notes.txt"):
        applier.apply(copyVec, infiles, outfiles)


def test_an_unsupported_vector_dtype_is_refused(tmp_path):
    controls = applier.ApplierControls()
    controls.setVectorDatatype(np.complex64)
    from poolparty_raster.applier.vectors import vector_spec
    with pytest.raises(ValueError, match="complex64.*uint8"):
        vector_spec("vec", None, "x.shp", controls)
