"""Histograms as RIOS writes them: which bins (``plan_histogram``), counted either from the
per-value counts gathered as blocks are computed (integer bands of moderate range) or by a
second pass over the written output (``BinCounter``: float bands, integer bands too wide to
count per value), and the STATISTICS_* metadata with the median and mode taken from them.

Bins follow RIOS 2's rules, whose outputs users compare with: thematic and Byte bands get a
bin per value from 0 ("direct"); other integer bands a bin per value from the minimum while
the range fits in 256, else 256 "linear" bins whose edges are whole values (RIOS re-bins its
per-value counts that way); float bands 256 linear bins from the minimum to the maximum, a
value's bin found as GDAL's GetHistogram finds it (RIOS calls it for float bands)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_LINEAR_BINS = 256


def counted_values(band: np.ndarray, ignore: float | None) -> np.ndarray:
    """The values of a band that statistics and histograms count: not NaN, not ``ignore``
    (the band itself where nothing is left out)."""
    if band.dtype.kind == "f":
        keep = ~np.isnan(band)
        if ignore is not None and not math.isnan(ignore):
            keep &= band != ignore
        return band[keep]
    return band if ignore is None else band[band != ignore]


@dataclass(frozen=True)
class HistogramPlan:
    """The bins of one band: ``lo``/``hi`` (STATISTICS_HISTOMIN/MAX, in pixel values),
    ``num_bins``, ``function`` ("direct" or "linear"), ``step`` (bin width, for the median
    and mode), ``calc_min``/``calc_max`` (the range GDAL's rule divides into the bins), and
    ``whole_edges``: linear bins of an integer band, whose edges RIOS rounds down to whole
    values."""

    lo: float
    hi: float
    num_bins: int
    function: str
    step: float
    calc_min: float
    calc_max: float
    whole_edges: bool = False


def plan_histogram(dtype: np.dtype, thematic: bool, minimum: float,
                   maximum: float) -> HistogramPlan:
    """The bins for a band of ``dtype`` whose values (nodata left out) span minimum..maximum."""
    dtype = np.dtype(dtype)
    if thematic or dtype == np.uint8:
        if minimum < 0:
            raise ValueError(f"a thematic output cannot hold negative values (minimum "
                             f"{minimum!r}): its histogram has a bin for each class from 0")
        hi = int(math.ceil(maximum))
        return HistogramPlan(0, hi, hi + 1, "direct", 1.0, -0.5, hi + 0.5)
    if dtype.kind in "iu":
        lo, hi = int(minimum), int(maximum)
        if hi - lo + 1 <= MAX_LINEAR_BINS:
            return HistogramPlan(lo, hi, hi - lo + 1, "direct", 1.0, lo - 0.5, hi + 0.5)
        step = (hi - lo) / MAX_LINEAR_BINS
        return HistogramPlan(lo, hi, MAX_LINEAR_BINS, "linear", step, lo, hi, whole_edges=True)
    lo, hi = float(minimum), float(maximum)
    calc_max, num_bins = (hi, MAX_LINEAR_BINS) if hi != lo else (hi + 0.5, 1)
    return HistogramPlan(lo, hi, num_bins, "linear", (calc_max - lo) / num_bins, lo, calc_max)


def histogram_from_counts(plan: HistogramPlan, start: int, counts: np.ndarray) -> np.ndarray:
    """The plan's bins from per-value counts (``counts[i]`` counts value ``start + i``; the
    counts cover the band's minimum to its maximum)."""
    if plan.function == "direct":
        hist = np.zeros(plan.num_bins, np.int64)
        hist[start - int(plan.lo):start - int(plan.lo) + len(counts)] = counts
        return hist
    offsets = np.arange(len(counts)) + (start - int(plan.lo))
    return np.bincount(_whole_edge_bins(plan, offsets), weights=counts,
                       minlength=plan.num_bins).astype(np.int64)


def _whole_edge_bins(plan: HistogramPlan, offsets: np.ndarray) -> np.ndarray:
    """Bin of each value ``lo + offset`` where bin i holds int(i*step) <= offset <
    int((i+1)*step), the last bin up to the maximum (RIOS's linearHistFromDirect)."""
    edges = (np.arange(1, plan.num_bins) * plan.step).astype(np.int64)
    return np.searchsorted(edges, offsets, side="right")


class BinCounter:
    """The second pass: counts a band's values, block by block, into the plan's bins,
    leaving out NaN and ``ignore`` as the statistics do."""

    def __init__(self, plan: HistogramPlan, ignore: float | None):
        self.plan = plan
        self.ignore = ignore
        self.hist = np.zeros(plan.num_bins, np.int64)

    def add(self, band: np.ndarray) -> None:
        values = counted_values(band, self.ignore).ravel()
        if values.size == 0:
            return
        plan = self.plan
        if plan.whole_edges:
            bins = _whole_edge_bins(plan, values.astype(np.int64) - int(plan.lo))
        else:
            # GDAL's GetHistogram: floor((value - min) * num_bins / (max - min)) in double,
            # values outside the range counted in the end bins.
            scale = plan.num_bins / (plan.calc_max - plan.calc_min)
            index = np.floor((values.astype(np.float64) - plan.calc_min) * scale)
            bins = np.clip(index, 0, plan.num_bins - 1).astype(np.int64)
        self.hist += np.bincount(bins, minlength=plan.num_bins)[:plan.num_bins]


def histogram_tags(plan: HistogramPlan, hist: np.ndarray, dtype: np.dtype) -> dict[str, str]:
    """STATISTICS_HISTO* and the median and mode estimated from the bins as RIOS does: the
    median is the first bin whose running count reaches half the total, the mode the fullest
    bin, each as ``bin * step + lo``; whole numbers for integer bands."""
    total = hist.sum()
    median_bin = int(np.flatnonzero(np.cumsum(hist) >= total / 2)[0])
    mode_bin = int(np.argmax(hist))
    as_float = np.dtype(dtype).kind == "f"

    def value(bin_number: int) -> str:
        exact = bin_number * plan.step + plan.lo
        return repr(float(exact)) if as_float else repr(int(round(exact)))

    return {"STATISTICS_HISTOBINVALUES": "|".join(map(str, hist.tolist())) + "|",
            "STATISTICS_HISTOMIN": repr(plan.lo), "STATISTICS_HISTOMAX": repr(plan.hi),
            "STATISTICS_HISTONUMBINS": repr(int(plan.num_bins)),
            "STATISTICS_HISTOBINFUNCTION": plan.function,
            "STATISTICS_MEDIAN": value(median_bin), "STATISTICS_MODE": value(mode_bin)}
