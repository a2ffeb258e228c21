"""Synthetic rasters for the applier tests, written with rasterio into tmp_path."""
from __future__ import annotations

import os

import numpy as np
import pytest
from rasterhelpers import writeRaster


@pytest.fixture(autouse=True)
def noSiteConfiguration(monkeypatch):
    """RIOS's site variables (RIOS_DFLT_*) of the machine running the tests would change
    the defaults the tests assert; a test sets those it is about."""
    for name in list(os.environ):
        if name.startswith("RIOS_DFLT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def ramps(tmp_path):
    """Two 1-band float32 ramps, 150 rows x 203 cols, and their arrays."""
    rows, cols = np.mgrid[0:150, 0:203]
    a = (rows * 1000 + cols).astype(np.float32)
    b = (cols * 7 - rows * 3).astype(np.float32)
    return (writeRaster(tmp_path / "a.tif", a), writeRaster(tmp_path / "b.tif", b),
            a[np.newaxis], b[np.newaxis])


@pytest.fixture
def randomImage(tmp_path):
    """A 3-band int16 random image, 97 rows x 131 cols, and its array."""
    rng = np.random.default_rng(42)
    array = rng.integers(-500, 500, size=(3, 97, 131), dtype=np.int16)
    return writeRaster(tmp_path / "rand.tif", array), array
