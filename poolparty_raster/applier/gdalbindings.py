"""GDAL's own Python bindings (``osgeo``), an optional dependency: where RIOS hands the user
GDAL objects (the setCallBeforeClose callback's Dataset), they are used when importable, and
their absence is an error that says what to install."""
from __future__ import annotations

from types import ModuleType

INSTALL_HINT = ("install GDAL's Python bindings: pip install 'poolparty_raster[gdal]' "
                "(builds against the system's libgdal) or the system's python3-gdal")


def require_gdal(feature: str) -> ModuleType:
    """``osgeo.gdal`` (its exception mode left as the user set it); an ImportError naming
    ``feature`` and what to install where it is missing."""
    try:
        from osgeo import gdal
    except ImportError as exc:
        raise ImportError(f"{feature} hands you a GDAL object (osgeo.gdal): "
                          f"{INSTALL_HINT}") from exc
    return gdal
