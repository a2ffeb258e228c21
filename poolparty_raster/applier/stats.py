"""Band statistics gathered block by block where the blocks are computed (in the workers),
merged on the driver, and written as RIOS writes them, so no second pass over the output
is needed."""
from __future__ import annotations

import math

import numpy as np

# RIOS's histogram: 'direct' (one bin per value) while the value range fits in this many
# bins, else 'linear' with this many bins.
MAX_LINEAR_BINS = 256
# Integer counts are kept per value (RIOS's single-pass method). A band whose values span
# more than this gets no histogram (RIOS would allocate the whole range): 2 MiB of counts.
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
        self.histStart = 0          # value counted by counts[0]
        self.counts: np.ndarray | None = None
        self.histTooWide = False

    def add(self, band: np.ndarray) -> None:
        values = band
        if band.dtype.kind == "f":
            mask = ~np.isnan(band)
            if self.ignore is not None and not math.isnan(self.ignore):
                mask &= band != self.ignore
            values = band[mask]
        elif self.ignore is not None:
            values = band[band != self.ignore]
        self.integer = band.dtype.kind in "iub"
        n = values.size
        if n == 0:
            return
        vmin, vmax = values.min(), values.max()
        if self.integer:
            self._addCounts(values, int(vmin), int(vmax))
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

    def _addCounts(self, values: np.ndarray, vmin: int, vmax: int) -> None:
        if self.histTooWide or vmax - vmin >= MAX_DIRECT_RANGE:
            self._dropHistogram()
            return
        counts = np.bincount((values.astype(np.int64) - vmin).ravel(), minlength=vmax - vmin + 1)
        self._mergeCounts(vmin, counts)

    def _mergeCounts(self, start: int, counts: np.ndarray) -> None:
        if self.counts is None:
            self.histStart, self.counts = start, counts.astype(np.int64)
            return
        offset = start - self.histStart
        if offset >= 0 and offset + len(counts) <= len(self.counts):  # the common case
            self.counts[offset:offset + len(counts)] += counts
            return
        lo = min(self.histStart, start)
        hi = max(self.histStart + len(self.counts), start + len(counts))
        if hi - lo > MAX_DIRECT_RANGE:
            self._dropHistogram()
            return
        merged = np.zeros(hi - lo, np.int64)
        merged[self.histStart - lo:self.histStart - lo + len(self.counts)] += self.counts
        merged[start - lo:start - lo + len(counts)] += counts
        self.histStart, self.counts = lo, merged

    def _dropHistogram(self) -> None:
        self.histTooWide, self.counts = True, None

    def merge(self, other: BandStats) -> None:
        """Add another part's statistics (of the same band, other blocks)."""
        if other.integer is not None:
            self.integer = other.integer
        if other.histTooWide:
            self._dropHistogram()
        elif other.counts is not None and not self.histTooWide:
            self._mergeCounts(other.histStart, other.counts)
        if other.count:
            self._combine(other.count, other.mean, other.m2, other.minimum, other.maximum)

    def gdalMetadata(self, dtype: np.dtype, basic: bool = True,
                     histogram: bool = True) -> dict[str, str]:
        """The band metadata RIOS writes: with ``basic``, STATISTICS_MINIMUM/MAXIMUM/MEAN/
        STDDEV (population standard deviation, as GDAL's), STATISTICS_SKIPFACTORX/Y and
        STATISTICS_EXCLUDEDVALUES; with ``histogram``, for integer bands, the histogram
        (STATISTICS_HISTOBINVALUES/HISTOMIN/HISTOMAX/HISTONUMBINS/HISTOBINFUNCTION) with
        STATISTICS_MEDIAN and STATISTICS_MODE. Empty if every pixel was ignored."""
        if self.count == 0:
            return {}
        tags = {}
        if basic:
            tags = {"STATISTICS_MINIMUM": repr(self.minimum),
                    "STATISTICS_MAXIMUM": repr(self.maximum), "STATISTICS_MEAN": repr(self.mean),
                    "STATISTICS_STDDEV": repr(math.sqrt(self.m2 / self.count)),
                    "STATISTICS_SKIPFACTORX": "1", "STATISTICS_SKIPFACTORY": "1"}
            if self.ignore is not None:
                tags["STATISTICS_EXCLUDEDVALUES"] = repr(self.ignore)
        if histogram and self.counts is not None and np.dtype(dtype).kind in "iu":
            tags.update(_histogramTags(np.dtype(dtype), self.histStart, self.counts))
        return tags


def _histogramTags(dtype: np.dtype, start: int, counts: np.ndarray) -> dict[str, str]:
    """RIOS's HistogramParams and writeHistogram for an integer band."""
    nonzero = np.flatnonzero(counts)
    minval, maxval = start + int(nonzero[0]), start + int(nonzero[-1])
    counts = counts[nonzero[0]:nonzero[-1] + 1]
    if dtype == np.uint8:
        # RIOS: one bin per value from 0, whatever the minimum.
        hist = np.zeros(maxval + 1, np.int64)
        hist[minval:] = counts
        lo, hi, step, function = 0, maxval, 1.0, "direct"
    elif maxval - minval + 1 <= MAX_LINEAR_BINS:
        hist, lo, hi, step, function = counts, minval, maxval, 1.0, "direct"
    else:
        lo, hi, function = minval, maxval, "linear"
        step = (hi - lo) / MAX_LINEAR_BINS
        hist = _linearFromDirect(MAX_LINEAR_BINS, step, counts)
    middle = hist.sum() / 2
    medianBin = int(np.flatnonzero(np.cumsum(hist) >= middle)[0])
    modeBin = int(np.argmax(hist))
    return {"STATISTICS_HISTOBINVALUES": "|".join(map(str, hist.tolist())) + "|",
            "STATISTICS_HISTOMIN": repr(lo), "STATISTICS_HISTOMAX": repr(hi),
            "STATISTICS_HISTONUMBINS": repr(len(hist)),
            "STATISTICS_HISTOBINFUNCTION": function,
            "STATISTICS_MEDIAN": repr(int(round(medianBin * step + lo))),
            "STATISTICS_MODE": repr(int(round(modeBin * step + lo)))}


def _linearFromDirect(numBins: int, step: float, counts: np.ndarray) -> np.ndarray:
    """RIOS's linearHistFromDirect: each new bin sums the direct bins it starts in."""
    out = np.zeros(numBins, np.int64)
    upper = 0.0
    for i in range(numBins):
        lower, upper = upper, (i + 1) * step
        j1, j2 = int(lower), int(upper) + (1 if i + 1 == numBins else 0)
        out[i] = counts[j1:j2].sum()
    return out
