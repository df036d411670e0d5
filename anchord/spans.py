"""Sorted, non-overlapping port ranges that answer "which of them overlap first-last?" fast.

Pure data structure, no I/O. The table builder (``anchord.labels``) and the nat-writer's
table (``anchord.nft``) both keep the ranges they accepted, which never overlap one another,
and check every new entry against them; a linear scan made a table of thousands of ranges
quadratic. Kept sorted by start, non-overlapping ranges are sorted by end too, so the ones
overlapping a query are one contiguous run found by two bisections.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class Spans:
    """Inclusive ranges ``(first, last)``, none overlapping another (the caller checks)."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in spans:
            self.add(first, last)

    def overlapping(self, first: int, last: int) -> list[tuple[int, int]]:
        """The ranges sharing a port with ``first-last``, in order."""
        lo = bisect.bisect_left(self._lasts, first)  # the first range ending at or after first
        hi = bisect.bisect_right(self._firsts, last)  # past the last one starting by last
        return list(zip(self._firsts[lo:hi], self._lasts[lo:hi], strict=True))

    def add(self, first: int, last: int) -> None:
        i = bisect.bisect_left(self._firsts, first)
        self._firsts.insert(i, first)
        self._lasts.insert(i, last)

    def remove(self, first: int, last: int) -> None:
        i = bisect.bisect_left(self._firsts, first)
        if i == len(self._firsts) or (self._firsts[i], self._lasts[i]) != (first, last):
            raise KeyError((first, last))
        del self._firsts[i]
        del self._lasts[i]

    def copy(self) -> Spans:
        other = Spans()
        other._firsts, other._lasts = list(self._firsts), list(self._lasts)
        return other

    def __len__(self) -> int:
        return len(self._firsts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._firsts, self._lasts, strict=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spans) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Spans({list(self)!r})"
