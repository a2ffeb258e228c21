"""Band statistics gathered block by block where the blocks are computed (in the workers),
merged on the driver, and written as RIOS writes them: the basic statistics and integer
bands' histograms need no second pass over the output (float bands' histograms do, as in
RIOS: their bins depend on the final minimum and maximum)."""
from __future__ import annotations

import math

import numpy as np

from poolparty_raster.applier.histogram import (HistogramPlan, counted_values,
                                                histogram_from_counts, plan_histogram)

# Integer counts are kept per value (RIOS's single-pass method) while a band's values span
# at most this (2 MiB of counts travel with each task's result); a wider band's histogram
# is counted by a second pass over the output instead.
MAX_DIRECT_RANGE = 1 << 18


class BandStats:
    """Running count, minimum, maximum, mean and sum of squared deviations of one band,
    leaving out ``ignore`` (and NaN, as GDAL does), and for integer bands the count of
    every value. Partial results merge with Chan et al.'s pairwise formula, which stays
    accurate where a plain sum of squares would not."""

    def __init__(self, ignore: float | None):
        self.ignore = ignore
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.integer: bool | None = None
        self.hist_start = 0          # value counted by counts[0]
        self.counts: np.ndarray | None = None
        self.hist_too_wide = False

    def add(self, band: np.ndarray) -> None:
        values = counted_values(band, self.ignore)
        self.integer = band.dtype.kind in "iub"
        n = values.size
        if n == 0:
            return
        vmin, vmax = values.min(), values.max()
        if self.integer:
            self._add_counts(values, int(vmin), int(vmax))
        values = values.astype(np.float64, copy=False)
        mean = float(values.mean())
        m2 = float(np.square(values - mean).sum())
        self._combine(n, mean, m2, float(vmin), float(vmax))

    def _combine(self, n: int, mean: float, m2: float, vmin: float, vmax: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.minimum = min(self.minimum, vmin)
        self.maximum = max(self.maximum, vmax)

    def _add_counts(self, values: np.ndarray, vmin: int, vmax: int) -> None:
        if self.hist_too_wide or vmax - vmin >= MAX_DIRECT_RANGE:
            self._drop_histogram()
            return
        counts = np.bincount((values.astype(np.int64) - vmin).ravel(), minlength=vmax - vmin + 1)
        self._merge_counts(vmin, counts)

    def _merge_counts(self, start: int, counts: np.ndarray) -> None:
        if self.counts is None:
            self.hist_start, self.counts = start, counts.astype(np.int64)
            return
        offset = start - self.hist_start
        if offset >= 0 and offset + len(counts) <= len(self.counts):  # the common case
            self.counts[offset:offset + len(counts)] += counts
            return
        lo = min(self.hist_start, start)
        hi = max(self.hist_start + len(self.counts), start + len(counts))
        if hi - lo > MAX_DIRECT_RANGE:
            self._drop_histogram()
            return
        merged = np.zeros(hi - lo, np.int64)
        merged[self.hist_start - lo:self.hist_start - lo + len(self.counts)] += self.counts
        merged[start - lo:start - lo + len(counts)] += counts
        self.hist_start, self.counts = lo, merged

    def _drop_histogram(self) -> None:
        self.hist_too_wide, self.counts = True, None

    def merge(self, other: BandStats) -> None:
        """Add another part's statistics (of the same band, other blocks)."""
        if other.integer is not None:
            self.integer = other.integer
        if other.hist_too_wide:
            self._drop_histogram()
        elif other.counts is not None and not self.hist_too_wide:
            self._merge_counts(other.hist_start, other.counts)
        if other.count:
            self._combine(other.count, other.mean, other.m2, other.minimum, other.maximum)

    def basic_tags(self) -> dict[str, str]:
        """STATISTICS_MINIMUM/MAXIMUM/MEAN/STDDEV (population standard deviation, as
        GDAL's), STATISTICS_SKIPFACTORX/Y and STATISTICS_EXCLUDEDVALUES, as RIOS writes
        them; empty if every pixel was ignored."""
        if self.count == 0:
            return {}
        tags = {"STATISTICS_MINIMUM": repr(self.minimum),
                "STATISTICS_MAXIMUM": repr(self.maximum), "STATISTICS_MEAN": repr(self.mean),
                "STATISTICS_STDDEV": repr(math.sqrt(self.m2 / self.count)),
                "STATISTICS_SKIPFACTORX": "1", "STATISTICS_SKIPFACTORY": "1"}
        if self.ignore is not None:
            tags["STATISTICS_EXCLUDEDVALUES"] = repr(self.ignore)
        return tags

    def histogram_plan(self, dtype: np.dtype, thematic: bool) -> HistogramPlan | None:
        """The band's histogram bins (histogram.py); None where RIOS writes no histogram:
        no pixel counted, or an infinite minimum or maximum."""
        if self.count == 0 or not (math.isfinite(self.minimum) and math.isfinite(self.maximum)):
            return None
        return plan_histogram(dtype, thematic, self.minimum, self.maximum)

    def counted_histogram(self, plan: HistogramPlan) -> np.ndarray | None:
        """The plan's bins from the per-value counts gathered with the blocks; None where
        there are none (float bands, integer bands of too wide a range): those take a
        second pass over the output (histogram.BinCounter)."""
        if self.counts is None:
            return None
        return histogram_from_counts(plan, self.hist_start, self.counts)
