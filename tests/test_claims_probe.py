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
        assert worker._create(claims.path_of(chunk), "0 vm 11 t0")
    worker._create(claims.path_of(41) + ".dup", "1 vm 12 t1")
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
