"""Band statistics gathered block by block as blocks are written, so no second pass over
the output is needed."""
from __future__ import annotations

import math

import numpy as np


class BandStats:
    """Running count, minimum, maximum, mean and sum of squared deviations of one band,
    leaving out ``ignore`` (and NaN, as GDAL does). Blocks are merged with Chan et al.'s
    pairwise formula, which stays accurate where a plain sum of squares would not."""

    def __init__(self, ignore: float | None):
        self.ignore = ignore
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, band: np.ndarray) -> None:
        values = band
        if band.dtype.kind == "f":
            mask = ~np.isnan(band)
            if self.ignore is not None and not math.isnan(self.ignore):
                mask &= band != self.ignore
            values = band[mask]
        elif self.ignore is not None:
            values = band[band != self.ignore]
        n = values.size
        if n == 0:
            return
        values = values.astype(np.float64, copy=False)
        mean = float(values.mean())
        m2 = float(np.square(values - mean).sum())
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))

    def gdalMetadata(self) -> dict[str, str]:
        """GDAL's STATISTICS_* band metadata; empty if every pixel was ignored. The
        standard deviation is the population one, as GDAL computes it."""
        if self.count == 0:
            return {}
        return {"STATISTICS_MINIMUM": repr(self.minimum), "STATISTICS_MAXIMUM": repr(self.maximum),
                "STATISTICS_MEAN": repr(self.mean),
                "STATISTICS_STDDEV": repr(math.sqrt(self.m2 / self.count))}
