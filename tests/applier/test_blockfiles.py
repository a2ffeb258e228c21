"""Block files: regions of one file per process, read back exactly, removed once read."""
from __future__ import annotations

import os

import numpy as np
import pytest

from poolparty_raster.applier.blockfiles import BlockWriter, Ledger, read_region
from poolparty_raster.applier.structures import ApplierBlockDefn, Timers

NAMES = [("out", None), ("mask", None)]


def task(first: int, count: int):
    """``count`` 4 x 5 blocks with an int16 and a uint8 output, made from ``first``."""
    blocks = [ApplierBlockDefn(4 * i, 0, 4, 5) for i in range(first, first + count)]
    arrays = [{NAMES[0]: np.full((2, 4, 5), i, np.int16), NAMES[1]: np.full((1, 4, 5), i % 7, np.uint8)}
              for i in range(first, first + count)]
    return blocks, arrays


def write(writer, first, count):
    blocks, arrays = task(first, count)
    layouts = []
    region = writer.write(zip(blocks, arrays), NAMES, Timers(), layouts)
    return region, blocks, arrays, layouts


def read(tmp_path, region, blocks, layouts):
    return list(read_region(str(tmp_path / region.name), region.offset, blocks, layouts, NAMES))


def test_tasks_share_a_file_until_it_is_full_and_read_back_exactly(tmp_path):
    taskBytes = 3 * (2 * 20 * 2 + 20)  # three blocks: 2 bands of int16 and 1 of uint8, 20 px
    writer = BlockWriter(str(tmp_path), file_bytes=2 * taskBytes)
    written = [write(writer, 3 * t, 3) for t in range(5)]
    regions = [w[0] for w in written]
    assert [(r.number, r.last) for r in regions] == [(1, False), (2, True), (1, False), (2, True),
                                                    (1, False)]
    assert regions[0].name == regions[1].name != regions[2].name
    assert regions[1].offset == taskBytes
    for region, blocks, arrays, layouts in reversed(written):
        got = read(tmp_path, region, blocks, layouts)
        assert [b for b, _ in got] == blocks
        for (_, gotArrays), want in zip(got, arrays):
            for key in NAMES:
                np.testing.assert_array_equal(gotArrays[key], want[key])
                assert gotArrays[key].dtype == want[key].dtype


def test_a_file_is_removed_once_every_region_of_it_was_read(tmp_path):
    writer = BlockWriter(str(tmp_path), file_bytes=1)  # 0 or 1: one task a file
    alone = write(writer, 0, 2)[0]
    assert alone.last and alone.number == 1
    writer = BlockWriter(str(tmp_path), file_bytes=10_000)
    first, second, third = (write(writer, i, 1)[0] for i in range(3))
    ledger = Ledger(str(tmp_path))
    ledger.done(alone)
    assert not (tmp_path / alone.name).exists()
    # Results arrive in any order; the file goes only when its last region is known and
    # every region was read.
    ledger.done(second)
    ledger.done(third)
    assert (tmp_path / first.name).exists() and not third.last
    writer.file_bytes = 1  # the next region fills the file
    fourth = write(writer, 3, 1)[0]
    assert fourth.last and fourth.number == 4
    ledger.done(fourth)
    assert (tmp_path / first.name).exists()  # region 1 is still unread
    ledger.done(first)
    assert os.listdir(tmp_path) == []


def test_a_task_that_fails_while_writing_leaves_the_earlier_regions_readable(tmp_path):
    writer = BlockWriter(str(tmp_path), file_bytes=10_000)
    kept = write(writer, 0, 2)

    def failing():
        blocks, arrays = task(2, 2)
        yield blocks[0], arrays[0]
        raise RuntimeError("the user function failed on the second block")
    with pytest.raises(RuntimeError, match="second block"):
        writer.write(failing(), NAMES, Timers(), [])
    after = write(writer, 4, 1)[0]
    assert after.name != kept[0].name and after.offset == 0  # a new file: the old one's end is unknown
    region, blocks, arrays, layouts = kept
    got = read(tmp_path, region, blocks, layouts)
    np.testing.assert_array_equal(got[1][1][NAMES[0]], arrays[1][NAMES[0]])


def test_a_region_cut_short_reads_as_an_error_naming_the_block(tmp_path):
    writer = BlockWriter(str(tmp_path), file_bytes=10_000)
    region, blocks, _, layouts = write(writer, 0, 2)
    os.truncate(tmp_path / region.name, os.path.getsize(tmp_path / region.name) - 1)
    with pytest.raises(OSError, match="ends inside the block at top=4, left=0"):
        read(tmp_path, region, blocks, layouts)
