"""The driver's probe of claims: by name or through one listing, whichever costs less here,
with the same answer either way."""
from __future__ import annotations

import os

from poolparty_raster.claims import Claims
from poolparty_raster.lookupcosts import LookupCosts


def claims_with_some_taken(tmp_path):
    claims = Claims(str(tmp_path / "claims"))
    claims.create()
    worker = Claims(claims.path)
    for chunk in (3, 40, 41, 99):
        assert worker._create(claims.path_of(chunk), "0 vm 11 t0", 1)
    worker._create(claims.path_of(41) + ".dup", "1 vm 12 t1", 1)
    return claims


def test_a_probe_by_listing_sees_what_lookups_see(tmp_path):
    wanted, second_runs = list(range(0, 100, 1)), [41, 7]
    by_name = claims_with_some_taken(tmp_path)
    looked_up = by_name.probe(wanted[:LookupCosts.FEW], second_runs)  # few: always by name
    listed = Claims(by_name.path)
    listed._costs.lookup_seconds, listed._costs.entry_seconds = 1.0, 1e-9  # a listing is cheaper
    view = listed.probe(wanted, second_runs)
    assert sorted(view.claims) == [3, 40, 41, 99]
    assert view.duplicated == {41: "1 vm 12 t1"} == looked_up.duplicated
    assert {c: h for c, (h, _) in view.claims.items() if c < LookupCosts.FEW} == \
        {c: h for c, (h, _) in looked_up.claims.items()}
    assert view.holders == {"0 vm 11 t0", "1 vm 12 t1"}
    mtime = os.stat(listed.path_of(99)).st_mtime
    assert view.claims[99] == ("0 vm 11 t0", mtime)  # the heartbeat, as a lookup has it


def test_many_names_are_listed_where_lookups_cost_more_and_looked_up_where_less():
    costs = LookupCosts()
    assert not costs.listing_is_cheaper(LookupCosts.FEW)  # a few: looked up
    assert costs.listing_is_cheaper(2000)  # nothing measured: a listing is measured first
    costs.listing_took(0.006, 600)  # GlusterFS: 600 entries in 6 ms
    costs.lookups_took(0.032, 32)   # and a missing name's lookup 1 ms
    assert costs.listing_is_cheaper(2000)
    costs.listing_took(1.0, 1_000_000)  # a local disk, a million claims kept
    costs.lookups_took(32e-6, 32)
    assert not costs.listing_is_cheaper(4096)


def test_runs_looked_up_along_the_chain_show_what_a_listing_shows(tmp_path):
    claims = Claims(str(tmp_path / "claims"))
    claims.create()
    first, second = Claims(claims.path), Claims(claims.path)
    assert first.claim_next(100, "0 vm 11 t0", set(), run=8)[0] == 0
    assert second.claim_next(100, "1 vm 12 t1", set(), run=30)[0] == 8
    assert first.claim_next(100, "0 vm 11 t0", set(), run=1)[0] == 1  # its run's next chunk
    claims.release(3, "0 vm 11 t0")  # the driver frees a chunk of the first run
    assert Claims(claims.path).probe(range(100)).claims.keys() == \
        set(range(38)) - {3}  # a first look lists: a freed chunk is known as freed
    by_name = Claims(claims.path)
    by_name.probe([0])  # the first look lists; the next ones look up
    lookups = []
    real_stat = os.stat
    os.stat = lambda path, *a, **k: (lookups.append(path), real_stat(path, *a, **k))[1]
    try:
        looked_up = by_name.probe([2, 5, 20, 37, 38, 60, 99])
    finally:
        os.stat = real_stat
    assert {c: h for c, (h, _) in looked_up.claims.items()} == {
        2: "0 vm 11 t0", 5: "0 vm 11 t0", 20: "1 vm 12 t1", 37: "1 vm 12 t1"}
    assert looked_up.run_starts == {2: 0, 5: 0, 20: 8, 37: 8}
    assert len(lookups) == 3  # a stat a run, and one where the chain ends (38): not 7
