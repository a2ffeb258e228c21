"""Vector inputs: a vector file among the inputs reaches the user function as a raster, the
features burnt onto the block's window of the working grid, as RIOS gives them (RIOS's
setters: setBurnValue, setBurnAttribute, setFilterSQL, setAlltouched, setVectorDatatype,
setVectorNull, setVectorlayer).

Each block is rasterised where it is read (in the worker), from the features whose
bounding boxes reach its window, with ``rasterio.features.rasterize`` (GDAL's rasteriser):
nothing is rasterised ahead and no temporary raster is shared between workers. Features
are read through pyogrio (OGR) one row of blocks at a time, as wide as the working grid,
and turned into geometries with shapely; a layer in another CRS is reprojected
geometry-first onto the working grid (RIOS rasterises in the layer's CRS and resamples
the raster). pyogrio and shapely are the optional extra ``vector``.

Windows are (row, col) offsets and sizes in pixels of the working grid."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

if TYPE_CHECKING:  # grid.py imports controls.py, which imports this module
    from poolparty_raster.applier.grid import WorkingGrid

INSTALL_HINT = "pip install 'poolparty_raster[vector]'"
# RIOS's defaults (its ApplierControls).
DEFAULT_BURN_VALUE = 1
DEFAULT_VECTOR_NULL = 0
DEFAULT_VECTOR_DTYPE = np.uint8
DEFAULT_VECTOR_LAYER = 0
# What GDAL's rasteriser writes (rasterio's list; int8 needs GDAL >= 3.7, which rasterio's
# wheels have).
RASTERIZE_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                    "float32", "float64")


class VectorSetters:
    """RIOS's setters of the vector inputs' options, part of ApplierControls (whose
    ``_set(option, value, imagename)`` they call). Without ``vectorname`` (an input's
    symbolic name) each sets every vector input's default."""

    def setBurnValue(self, burnvalue: float, vectorname: str | None = None) -> None:
        """The value burnt into the pixels of every feature (default 1); see
        setBurnAttribute."""
        self._set("burnValue", burnvalue, vectorname)

    def setBurnAttribute(self, burnattribute: str | None,
                         vectorname: str | None = None) -> None:
        """Burn each feature's value of this attribute instead of the burn value (default
        None: the burn value)."""
        self._set("burnAttribute", burnattribute, vectorname)

    def setVectorNull(self, vectornull: float, vectorname: str | None = None) -> None:
        """The value of pixels no feature covers (default 0); also what
        ``info.getNoDataValueFor`` gives for the vector's array."""
        self._set("vectorNull", vectornull, vectorname)

    def setFilterSQL(self, filtersql: str | None, vectorname: str | None = None) -> None:
        """Burn only the features this selects: an SQL WHERE clause (``"class = 3"``), or
        a whole ``SELECT ... FROM layer ...`` statement, as RIOS hands it to GDAL."""
        self._set("filterSQL", filtersql, vectorname)

    def setAlltouched(self, alltouched: bool, vectorname: str | None = None) -> None:
        """True: burn every pixel a feature touches; False (default): only the pixels whose
        centre it covers (GDAL's rule)."""
        self._set("allTouched", bool(alltouched), vectorname)

    def setVectorDatatype(self, vectordatatype: Any, vectorname: str | None = None) -> None:
        """The numpy dtype of the burnt array (default uint8)."""
        self._set("vectorDatatype", np.dtype(vectordatatype), vectorname)

    def setVectorlayer(self, vectorlayer: int | str, vectorname: str | None = None) -> None:
        """The layer to burn, by index from 0 (default 0) or by name, for vector files
        with several layers."""
        self._set("vectorLayer", vectorlayer, vectorname)


def require_vector_support(why: str) -> tuple[ModuleType, ModuleType]:
    """(pyogrio, shapely); an ImportError saying ``why`` they are needed and what to install
    where either is missing."""
    try:
        import pyogrio
        import shapely
    except ImportError as exc:
        raise ImportError(f"{why} needs pyogrio and shapely: {INSTALL_HINT}") from exc
    return pyogrio, shapely


def vector_or_raise(filename: str, error: Exception) -> None:
    """Called for an input rasterio cannot open (``error``): returns if OGR opens it as a
    vector file; else raises, ``error`` itself where OGR cannot open it either, an
    ImportError naming the extra where pyogrio is not installed."""
    try:
        pyogrio, _ = require_vector_support(
            f"{filename} is not a raster rasterio can open ({error}); if it is a vector "
            "file, reading vector inputs")
    except ImportError as missing:
        raise missing from error
    try:
        pyogrio.list_layers(filename)
    except Exception:
        raise error from None


@dataclass
class VectorSpec:
    """One vector input and how to burn it: ``layer`` (index from 0, or name), the value
    burnt into each feature's pixels (``burn_value``, or the feature's ``burn_attribute``),
    the pixels' value elsewhere (``null``), the array's dtype, GDAL's all-touched rule
    (every pixel a feature touches, not only those whose centre it covers), and a filter
    (an SQL WHERE clause, or a whole SELECT statement as RIOS passes it to GDAL).
    ``crs_wkt`` (the layer's CRS; None: taken to be the working grid's) is filled in by
    the driver's check."""

    name: str
    seq_num: int | None
    filename: str
    layer: int | str = DEFAULT_VECTOR_LAYER
    burn_value: float = DEFAULT_BURN_VALUE
    burn_attribute: str | None = None
    filter_sql: str | None = None
    all_touched: bool = False
    dtype: str = np.dtype(DEFAULT_VECTOR_DTYPE).name
    null: float = DEFAULT_VECTOR_NULL
    crs_wkt: str | None = None


def vector_spec(name: str, seq_num: int | None, filename: str, controls: Any) -> VectorSpec:
    """The spec of a vector input from the controls' per-input (else default) options."""
    def option(key: str) -> Any:
        return controls.getOptionForImagename(key, name)

    dtype = np.dtype(option("vectorDatatype")).name
    if dtype not in RASTERIZE_DTYPES:
        raise ValueError(f"vector input {name}: setVectorDatatype({dtype}) is not a type "
                         f"GDAL rasterises into; one of {', '.join(RASTERIZE_DTYPES)}")
    return VectorSpec(name, seq_num, filename, option("vectorLayer"), option("burnValue"),
                      option("burnAttribute"), option("filterSQL"), bool(option("allTouched")),
                      dtype, option("vectorNull"))


def check_vector_specs(specs: list[VectorSpec]) -> None:
    """The driver's check, once before any block is read: each layer exists (by index or
    name), the burn attribute is one of its fields; records each layer's CRS in its spec,
    so the workers need not look it up."""
    if not specs:
        return
    pyogrio, _ = require_vector_support("a vector input")
    for spec in specs:
        layers = [str(name) for name in pyogrio.list_layers(spec.filename)[:, 0]]
        if isinstance(spec.layer, str) and spec.layer not in layers:
            raise ValueError(f"vector input {spec.name} ({spec.filename}) has no layer "
                             f"{spec.layer!r}; its layers: {', '.join(layers)}")
        if not isinstance(spec.layer, str) and not 0 <= int(spec.layer) < len(layers):
            raise ValueError(f"vector input {spec.name} ({spec.filename}) has "
                             f"{len(layers)} layer(s); layer index {spec.layer} was set")
        info = pyogrio.read_info(spec.filename, layer=spec.layer)
        if spec.burn_attribute is not None and spec.burn_attribute not in list(info["fields"]):
            raise ValueError(f"vector input {spec.name} ({spec.filename}): no attribute "
                             f"{spec.burn_attribute!r} to burn; its fields: "
                             f"{', '.join(map(str, info['fields']))}")
        spec.crs_wkt = None if not info["crs"] else CRS.from_user_input(info["crs"]).to_wkt()


class VectorReader:
    """One vector input, read as ``reader.InputReader`` reads a raster: ``read`` gives a
    window of the working grid as a (1, rows, cols) array of ``spec.dtype``. The features
    of the current row of windows are kept (in the working grid's CRS, with their bounding
    boxes), since a task's blocks run along rows."""

    def __init__(self, spec: VectorSpec, grid: WorkingGrid, overlap: int):
        self.spec = spec
        self.grid = grid
        self.overlap = overlap
        self.nodata = [spec.null]   # getNoDataValueFor(inputs.vec) gives the null value
        self.dtype = np.dtype(spec.dtype)
        self._strip: tuple[int, int] | None = None

    def __enter__(self) -> VectorReader:
        self._pyogrio, self._shapely = require_vector_support("a vector input")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._strip = None

    def read(self, row: int, col: int, nrows: int, ncols: int) -> np.ndarray:
        """Rows row..row+nrows, cols col..col+ncols of the working grid, burnt."""
        if self._strip != (row, nrows):
            self._load_strip(row, nrows)
        transform = self.grid.transform @ Affine.translation(col, row)
        left, top = transform @ (0, 0)
        right, bottom = transform @ (ncols, nrows)
        b = self._bounds
        near = ((b[:, 0] <= right) & (b[:, 2] >= left)
                & (b[:, 1] <= top) & (b[:, 3] >= bottom))
        out = np.full((1, nrows, ncols), self.spec.null, dtype=self.dtype)
        if near.any():
            shapes = zip(self._geometries[near], self._values[near])
            rasterize(shapes, out=out[0], transform=transform,
                      all_touched=self.spec.all_touched)
        return out

    def _load_strip(self, row: int, nrows: int) -> None:
        """The features reaching rows row..row+nrows of the grid, across its whole width
        and overlap margin, grown by a pixel on every side (a bounding box reprojected
        from the grid's CRS is approximate)."""
        spec, grid, o = self.spec, self.grid, self.overlap
        t = grid.transform
        left, top = t @ (-o - 1, row - 1)
        right, bottom = t @ (grid.width + o + 1, row + nrows + 1)
        layer_crs = None if spec.crs_wkt is None else CRS.from_wkt(spec.crs_wkt)
        reproject = layer_crs is not None and grid.crs is not None and layer_crs != grid.crs
        bbox = (transform_bounds(grid.crs, layer_crs, left, bottom, right, top,
                                 densify_pts=21) if reproject else (left, bottom, right, top))
        geometries, values = self._read_features(bbox)
        keep = ~self._shapely.is_missing(geometries) & ~self._shapely.is_empty(geometries)
        geometries, values = geometries[keep], values[keep]
        if reproject and len(geometries):
            geometries = self._shapely.transform(
                geometries, lambda xy: np.column_stack(
                    transform_points(layer_crs, grid.crs, xy[:, 0], xy[:, 1])))
        self._geometries = geometries
        self._values = values
        self._bounds = self._shapely.bounds(geometries).reshape(-1, 4)
        self._strip = (row, nrows)

    def _read_features(self, bbox: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Geometries (shapely) and burn values of the features in ``bbox`` (the layer's
        CRS), in the layer's order (GDAL burns later features over earlier ones); a SELECT
        statement's features in the order it gives them."""
        spec = self.spec
        sql = spec.filter_sql
        columns: list[str] | None = [spec.burn_attribute] if spec.burn_attribute else []
        selection: dict[str, Any] = {"layer": spec.layer}
        if sql is not None and sql.lstrip().upper().startswith("SELECT"):
            selection = {"sql": sql}  # a statement names its own layer
        elif sql is not None:
            selection["where"] = sql
            columns = None  # pyogrio: the fields a WHERE clause names must be read
        meta, fids, wkb, fields = self._pyogrio.raw.read(
            spec.filename, columns=columns, bbox=tuple(bbox), force_2d=True,
            return_fids="sql" not in selection, **selection)
        geometries = self._shapely.from_wkb(wkb) if wkb is not None else np.empty(0, object)
        if spec.burn_attribute is None:
            values = np.full(len(geometries), spec.burn_value)
        else:
            names = [str(n) for n in meta["fields"]]
            values = np.asarray(fields[names.index(spec.burn_attribute)])
            if values.dtype.kind == "f":
                # pyogrio reads a null field as NaN; GDAL reading the layer burns it as 0.
                values = np.where(np.isnan(values), 0, values)
        if fids is not None:
            # A spatial index (GeoPackage's R-tree) hands features out in its own order:
            # back into the layer's, in which GDAL burns the whole layer.
            order = np.argsort(fids, kind="stable")
            geometries, values = geometries[order], values[order]
        return geometries, values
