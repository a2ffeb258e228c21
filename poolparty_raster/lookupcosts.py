"""Whether names are cheaper looked up one by one or listed, on the filesystem at hand.

On a local disk a lookup costs microseconds and a listing of a large directory more than many
lookups; on a networked filesystem a lookup, of a missing name too, is a round trip (measured
on GlusterFS: 0.3-2 ms) where a listing brings hundreds of names a round trip. The driver's
claims probe (claims.py) asks this before each look.
"""
from __future__ import annotations


class LookupCosts:
    """What looking up claims by name and listing claims/ cost on this filesystem, as
    measured: whether ``lookups`` names are cheaper looked up one by one or listed. A few
    names are always looked up; for more, lookups are measured on a sample of FEW names and
    a listing on its first use, then the cheaper is taken and re-measured as it is paid.
    Only lookups of FEW names or more are measured: most of those are of missing names (a
    round trip each), where a few are running chunks' claims, which a client may answer
    from its attribute cache."""

    FEW = 32

    def __init__(self) -> None:
        self.lookup_seconds = 0.0  # a lookup's, the mean of the last probe of many names
        self.entry_seconds = 0.0   # a listed entry's, at the last listing
        self.entries = 0           # entries in the last listing

    def listing_is_cheaper(self, lookups: int) -> bool:
        if lookups <= self.FEW:
            return False
        if not self.entry_seconds or not self.lookup_seconds:  # measure what is not known
            return not self.entry_seconds
        return lookups * self.lookup_seconds > max(self.entries, 1) * self.entry_seconds

    def lookups_took(self, seconds: float, count: int) -> None:
        if count >= self.FEW:
            self.lookup_seconds = seconds / count

    def listing_took(self, seconds: float, entries: int) -> None:
        self.entries = entries
        self.entry_seconds = seconds / max(entries, 1)
