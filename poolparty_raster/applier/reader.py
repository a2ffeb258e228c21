"""Worker side, inputs: each task opens its inputs once and reads each block's window (plus
the overlap margin) on the working grid.

Windows are (row, col) offsets and sizes in pixels of the working grid."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from poolparty_raster.applier.grid import RasterInfo, WorkingGrid, on_grid
from poolparty_raster.applier.structures import FilenameAssociations
from poolparty_raster.applier.vectors import VectorReader, VectorSpec, vector_spec

_RESAMPLING_NAMES = {"near": "nearest", "cubicspline": "cubic_spline"}


@dataclass
class InputSpec:
    """One input file: its key in ``inputs``, resampling name, nodata override (None: the
    file's own; a number for every band, or a list per selected band) and the bands to read
    (None: all, else 1-based numbers)."""

    name: str
    seq_num: int | None
    filename: str
    resample_method: str
    nodata_override: float | list[float | None] | None
    layers: list[int] | None = None


class InputReader:
    """One open input. A file already on the working grid's pixel grid is read directly;
    any other through WarpedVRTs covering the working grid grown by the overlap on every
    side, so the margin holds resampled data like the inside. The warper's scale is fixed
    (XSCALE/YSCALE), so a windowed read equals a read of the whole VRT: GDAL otherwise
    derives the scale from each window, and bilinear/cubic/lanczos results then depend on
    the block size. Bands with different nodata values get a VRT each (a WarpedVRT has one
    source nodata value)."""

    def __init__(self, spec: InputSpec, grid: WorkingGrid, overlap: int):
        self.spec = spec
        self.grid = grid
        self.overlap = overlap

    def __enter__(self) -> InputReader:
        self._stack = contextlib.ExitStack()
        src = self._stack.enter_context(rasterio.open(self.spec.filename))
        layers = self.spec.layers or list(range(1, src.count + 1))
        if max(layers) > src.count:
            raise ValueError(f"{self.spec.filename} has {src.count} bands; layers {layers} "
                             "were selected")
        self.layers = None if self.spec.layers is None else layers
        self.nodata = nodata_list(self.spec, src.nodatavals, layers)
        self.dtype = np.dtype(src.dtypes[layers[0] - 1])
        offset = on_grid(src.transform, src.crs, self.grid)
        if offset is None:
            self._warped(src, layers)
        else:
            self.parts = [(src, self.layers, None)]
            self.row_offset, self.col_offset = offset
            self.height, self.width = src.height, src.width
        self.fill = np.array([0 if v is None else v for v in self.nodata],
                             dtype=self.dtype)[:, None, None]
        return self

    def _warped(self, src: Any, layers: list[int]) -> None:
        o = self.overlap
        g = self.grid
        transform = g.transform @ Affine.translation(-o, -o)
        width, height = g.width + 2 * o, g.height + 2 * o
        extras = _fixed_scale(src, g, transform, width, height)
        groups: dict[Any, list[int]] = {}
        for position, nodata in enumerate(self.nodata):
            groups.setdefault(nodata, []).append(position)
        self.parts = []
        for nodata, positions in groups.items():
            # UNIFIED_SRC_NODATA=NO: each band's nodata masks that band alone (GDAL's default
            # counts a pixel as nodata only where every band of the source is).
            kwargs = {} if nodata is None else {"src_nodata": nodata, "nodata": nodata,
                                                "UNIFIED_SRC_NODATA": "NO"}
            vrt = self._stack.enter_context(WarpedVRT(
                src, crs=g.crs, transform=transform, width=width, height=height,
                resampling=_resampling(self.spec.resample_method), **kwargs, **extras))
            indexes = [layers[p] for p in positions]
            whole = len(groups) == 1 and self.layers is None
            self.parts.append((vrt, None if whole else indexes, None if whole else positions))
        self.row_offset = self.col_offset = -o
        self.height, self.width = height, width

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def read(self, row: int, col: int, nrows: int, ncols: int) -> np.ndarray:
        """Rows row..row+nrows, cols col..col+ncols of the working grid, shaped (bands,
        nrows, ncols); pixels beyond the file hold its nodata value (0 where it has none)."""
        r0, c0 = row - self.row_offset, col - self.col_offset
        ra, rb = max(r0, 0), min(r0 + nrows, self.height)
        ca, cb = max(c0, 0), min(c0 + ncols, self.width)
        if (ra, rb, ca, cb) == (r0, r0 + nrows, c0, c0 + ncols):
            return self._read_window(Window(c0, r0, ncols, nrows))
        array = np.empty((len(self.nodata), nrows, ncols), dtype=self.dtype)
        array[:] = self.fill
        if ra < rb and ca < cb:
            array[:, ra - r0:rb - r0, ca - c0:cb - c0] = self._read_window(
                Window(ca, ra, cb - ca, rb - ra))
        return array

    def _read_window(self, window: Window) -> np.ndarray:
        if len(self.parts) == 1 and self.parts[0][2] is None:
            ds, indexes, _ = self.parts[0]
            return ds.read(indexes, window=window)
        out = np.empty((len(self.nodata), int(window.height), int(window.width)), self.dtype)
        for ds, indexes, positions in self.parts:
            out[positions] = ds.read(indexes, window=window)
        return out


def nodata_list(spec: InputSpec, nodatavals: tuple[Any, ...], layers: list[int]) -> list[Any]:
    """One nodata value per band read: the override (a scalar for all, or a list per band),
    else the file's (``nodatavals``, per band of the file)."""
    override = spec.nodata_override
    if override is None:
        return [nodatavals[b - 1] for b in layers]
    if isinstance(override, list):
        if len(override) != len(layers):
            raise ValueError(f"input {_label(spec)} ({spec.filename}): {len(override)} "
                             f"nodata values given for {len(layers)} bands")
        return list(override)
    return [override] * len(layers)


def check_nodata_fits(spec: InputSpec, nodata: list[Any], dtype: np.dtype) -> None:
    """A ValueError naming the input, the value and the dtype where the arrays read
    (``dtype``) cannot hold a band's nodata value exactly: pixels outside the input are
    filled with it, and comparing the data with a value it cannot hold finds nothing."""
    for band, value in enumerate(nodata, start=1):
        if value is None or _holds(dtype, value):
            continue
        if spec.nodata_override is not None:
            where = f"setInputNoDataValue gives {value!r} for band {band} of"
            advice = "give a value the dtype can hold"
        else:
            where = f"the file sets nodata {value!r} for band {band} of"
            advice = "override it with setInputNoDataValue"
        raise ValueError(f"{where} input {_label(spec)} ({spec.filename}), whose "
                         f"{np.dtype(dtype).name} arrays cannot hold it: {advice}")


def check_input_nodata(specs: list[InputSpec], infos: dict[str, RasterInfo]) -> None:
    """The check of every input's nodata values, made once by the driver before any block
    is read, with what ``describe_rasters`` found (the readers in the tasks rely on it)."""
    for spec in specs:
        info = infos[spec.filename]
        layers = spec.layers or list(range(1, len(info.dtypes) + 1))
        if max(layers) <= len(info.dtypes):  # else the reader says which layers are missing
            check_nodata_fits(spec, nodata_list(spec, info.nodatavals, layers),
                              np.dtype(info.dtypes[layers[0] - 1]))


def _holds(dtype: np.dtype, value: Any) -> bool:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        try:
            exact = value if isinstance(value, (int, np.integer)) else float(value)
        except (TypeError, ValueError):
            return False
        if isinstance(exact, float):
            if not exact.is_integer():  # NaN and infinities too
                return False
            exact = int(exact)
        info = np.iinfo(dtype)
        return info.min <= exact <= info.max
    if dtype.kind == "f":
        value = float(value)
        return not math.isfinite(value) or abs(value) <= np.finfo(dtype).max
    return True


def _label(spec: InputSpec) -> str:
    return spec.name if spec.seq_num is None else f"{spec.name}[{spec.seq_num}]"


def _fixed_scale(src: Any, grid: WorkingGrid, transform: Affine, width: int,
                 height: int) -> dict[str, str]:
    """XSCALE/YSCALE as GDAL would compute them when warping the whole grid at once:
    destination pixels per source pixel over the grid's footprint in the source."""
    bounds = (transform.c, transform.f + height * transform.e,
              transform.c + width * transform.a, transform.f)
    if src.crs is not None and grid.crs is not None and src.crs != grid.crs:
        bounds = transform_bounds(grid.crs, src.crs, *bounds, densify_pts=21)
    src_cols = (bounds[2] - bounds[0]) / abs(src.transform.a)
    src_rows = (bounds[3] - bounds[1]) / abs(src.transform.e)
    if not (src_cols > 0 and src_rows > 0 and math.isfinite(src_cols + src_rows)):
        return {}
    return {"XSCALE": repr(width / src_cols), "YSCALE": repr(height / src_rows)}


def _resampling(name: str) -> Resampling:
    return Resampling[_RESAMPLING_NAMES.get(name, name)]


def input_specs(infiles: FilenameAssociations, controls: Any,
                vector_files: set[str] | frozenset[str] = frozenset()
                ) -> list[InputSpec | VectorSpec]:
    """A spec per input, in the order of ``infiles``: a VectorSpec for those among
    ``vector_files``."""
    return [vector_spec(name, seq_num, filename, controls) if filename in vector_files else
            InputSpec(name, seq_num, filename,
                      controls.getOptionForImagename("resampleMethod", name),
                      controls.getOptionForImagename("inputNoData", name),
                      controls.getOptionForImagename("layerselection", name))
            for name, seq_num, filename in infiles]


def open_reader(spec: InputSpec | VectorSpec, grid: WorkingGrid,
                overlap: int) -> InputReader | VectorReader:
    """The reader of a raster or a vector input (enter it to open the file)."""
    if isinstance(spec, VectorSpec):
        return VectorReader(spec, grid, overlap)
    return InputReader(spec, grid, overlap)
