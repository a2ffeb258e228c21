"""Output files: the family replaced as a whole, two-phase finishing, creation options,
RIOS's histogram metadata, COG on all cores."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterhelpers import writeRaster

from poolparty_raster import applier


def runCopy(tmp_path, infile, outnames, window=32, fail=None, **setters):
    infiles = applier.FilenameAssociations()
    infiles.img = infile
    outfiles = applier.FilenameAssociations()
    for name in outnames:
        setattr(outfiles, name, str(tmp_path / f"{name}.tif"))
    controls = applier.ApplierControls()
    controls.setWindowSize(window, window)
    for setter, args in setters.items():
        getattr(controls, setter)(*args)

    def copy(info, inputs, outputs):
        for name in outnames:
            setattr(outputs, name, inputs.img)
    applier.apply(copy, infiles, outfiles, controls=controls)
    return outfiles


def test_stale_sidecars_of_the_previous_output_are_replaced(tmp_path):
    old = np.full((1, 100, 100), 7, np.int16)
    writeRaster(tmp_path / "out.tif", old)
    with rasterio.Env(TIFF_USE_OVR=True), rasterio.open(tmp_path / "out.tif", "r+") as ds:
        ds.build_overviews([2], rasterio.enums.Resampling.nearest)  # into out.tif.ovr
    (tmp_path / "out.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MAXIMUM">7</MDI>'
        '<MDI key="STATISTICS_MEAN">7</MDI></Metadata></PAMRasterBand></PAMDataset>')
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.overviews(1) == [2] and ds.tags(1)["STATISTICS_MAXIMUM"] == "7"
    assert os.path.exists(tmp_path / "out.tif.ovr")
    assert os.path.exists(tmp_path / "out.tif.aux.xml")
    (tmp_path / "outer.tif.aux.xml").write_text("not ours")
    new = np.arange(100 * 100, dtype=np.int16).reshape(1, 100, 100)
    infile = writeRaster(tmp_path / "in.tif", new)
    runCopy(tmp_path, infile, ["out"], setOmitPyramids=(True,), setStatsIgnore=(None,))
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "out.tif", "outer.tif.aux.xml"]
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.overviews(1) == []
        assert float(ds.tags(1)["STATISTICS_MAXIMUM"]) == 9999
        np.testing.assert_array_equal(ds.read(), new)


def test_no_output_is_replaced_when_another_fails_to_finish(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.tif").write_bytes(b"earlier " + name.encode())
    infile = writeRaster(tmp_path / "in.tif", np.ones((1, 40, 40), np.uint8))
    with pytest.raises(Exception):
        # b's overviews fail after a is complete: a must not be moved into place.
        runCopy(tmp_path, infile, ["a", "b"], setOverviewLevels=([2],), setOverviewMinDim=(1,),
                setOverviewAggregationType=("NO_SUCH_METHOD", "b"))
    assert (tmp_path / "a.tif").read_bytes() == b"earlier a"
    assert (tmp_path / "b.tif").read_bytes() == b"earlier b"
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif", "in.tif"]


def test_user_creation_options_keep_the_structural_defaults(tmp_path):
    infile = writeRaster(tmp_path / "in.tif", np.ones((1, 70, 90), np.uint16))
    out = runCopy(tmp_path, infile, ["out"], window=48, setCreationOptions=(["COMPRESS=LZW"],))
    with rasterio.open(out.out) as ds:
        assert ds.block_shapes[0] == (48, 48)       # tiled, tiles = windows
        assert ds.compression.name.upper() == "LZW"
    out = runCopy(tmp_path, infile, ["out"], setCreationOptions=({"tiled": "NO"},))
    with rasterio.open(out.out) as ds:
        assert ds.block_shapes[0][1] == 90           # stripped, as asked


def test_cog_output_with_recognisable_temporary_names(tmp_path, monkeypatch):
    seen = []
    real = rasterio.shutil.copy

    def spy(src, dst, **options):
        seen.append((os.path.basename(src), options))
        return real(src, dst, **options)
    monkeypatch.setattr(rasterio.shutil, "copy", spy)
    infile = writeRaster(tmp_path / "in.tif", np.ones((1, 40, 40), np.uint8))
    runCopy(tmp_path, infile, ["out"], setOutputDriverName=("COG",))
    [(name, options)] = seen
    assert name.startswith(".out.tif.poolparty_raster-partial.")
    assert options["NUM_THREADS"] == "ALL_CPUS"
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "out.tif"]


def _expectedHistogram(values, dtype):
    """RIOS's rules, written out independently: uint8 direct from 0; other integers direct
    while the range fits in 256 bins, else 256 linear bins."""
    lo, hi = int(values.min()), int(values.max())
    direct = np.bincount(values - lo)
    if dtype == np.uint8:
        return np.concatenate([np.zeros(lo, np.int64), direct]), 0, hi, 1.0, "direct"
    if hi - lo + 1 <= 256:
        return direct, lo, hi, 1.0, "direct"
    step = (hi - lo) / 256
    edges = [int(i * step) for i in range(257)]
    edges[-1] = len(direct)
    return np.array([direct[edges[i]:edges[i + 1]].sum() for i in range(256)]), lo, hi, step, "linear"


@pytest.mark.parametrize("dtype, low, high", [("uint8", 20, 200), ("int16", -50, 100),
                                               ("int16", -3000, 5000)])
def test_histogram_median_mode_as_rios_writes_them(tmp_path, dtype, low, high):
    rng = np.random.default_rng(5)
    array = rng.integers(low, high, size=(1, 90, 110)).astype(dtype)
    array[0, :3] = low + 1  # a clear mode
    infile = writeRaster(tmp_path / "in.tif", array)
    out = runCopy(tmp_path, infile, ["out"], setStatsIgnore=(None,))
    with rasterio.open(out.out) as ds:
        tags = ds.tags(1)
    hist, lo, hi, step, function = _expectedHistogram(array.ravel().astype(np.int64), np.dtype(dtype))
    assert tags["STATISTICS_HISTOBINVALUES"] == "|".join(map(str, hist)) + "|"
    assert (tags["STATISTICS_HISTOMIN"], tags["STATISTICS_HISTOMAX"]) == (repr(lo), repr(hi))
    assert tags["STATISTICS_HISTONUMBINS"] == repr(len(hist))
    assert tags["STATISTICS_HISTOBINFUNCTION"] == function
    median = int(np.flatnonzero(np.cumsum(hist) >= hist.sum() / 2)[0])
    assert tags["STATISTICS_MEDIAN"] == repr(int(round(median * step + lo)))
    assert tags["STATISTICS_MODE"] == repr(int(round(int(np.argmax(hist)) * step + lo)))
    assert tags["STATISTICS_SKIPFACTORX"] == "1"
