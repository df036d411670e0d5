"""anchord.spans: the sorted range index against a plain scan."""

from __future__ import annotations

import random

import pytest

from anchord.spans import Spans


def test_overlapping_matches_a_scan_as_ranges_come_and_go() -> None:
    rng = random.Random(11)
    spans, plain = Spans(), set[tuple[int, int]]()
    for _ in range(3000):
        a = rng.randrange(1, 2000)
        b = a + rng.randrange(0, 30)
        hits = [(x, y) for x, y in sorted(plain) if x <= b and a <= y]
        assert spans.overlapping(a, b) == hits
        if not hits and rng.random() < 0.6:
            spans.add(a, b)  # only non-overlapping ranges are held
            plain.add((a, b))
        elif plain and rng.random() < 0.3:
            gone = rng.choice(sorted(plain))
            spans.remove(*gone)
            plain.discard(gone)
        assert list(spans) == sorted(plain)
        assert len(spans) == len(plain)
    copy = spans.copy()
    copy.add(5000, 5001)
    assert copy != spans
    assert list(spans) == sorted(plain)
    with pytest.raises(KeyError):
        spans.remove(5000, 5001)
