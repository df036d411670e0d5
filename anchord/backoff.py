"""Retry delays: exponential backoff, capped, with optional jitter.

Owns the one backoff policy of anchord: the first delay is ``initial``, each next one doubles,
none exceeds ``cap``; ``jitter`` spreads each delay by up to that fraction either way (the
DHCP clients' RFC 2131 4.1 / RFC 8415 15 retransmissions). ``reset()`` after a success starts
short again. Used by the DHCP clients and link retries, the service-anchor's resolutions,
discovery's re-lists and event subscription, and the bus client's Hello.

No clock here: callers add the delay to their own (monotonic) clock or wait on their own event.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Successive delays: ``initial``, doubling up to ``cap``, each spread by ``jitter``."""

    initial: float
    cap: float
    jitter: float = 0.0  # fraction of the delay, both ways (RFC 8415's RAND is 0.1)
    rng: random.Random = field(default_factory=random.Random)
    _current: float = 0.0  # the last delay before jitter; 0: none since the last reset

    def reset(self) -> None:
        """A success: the next delay is ``initial`` again."""
        self._current = 0.0

    def next(self) -> float:
        """The next delay in seconds, never above ``cap``.

        Doubling the capped value, never an exponent of the failure count: a long outage
        cannot overflow.
        """
        base = min(self.initial if self._current == 0.0 else self._current * 2, self.cap)
        self._current = base
        if not self.jitter:
            return base
        return min(base + base * self.jitter * self.rng.uniform(-1.0, 1.0), self.cap)
