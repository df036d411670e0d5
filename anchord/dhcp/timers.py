"""Retransmission timing: exponential backoff with jitter, capped.

Owns the one backoff policy the DHCPv4 and DHCPv6 clients share (RFC 2131 4.1:
4 s doubling with +-1 s jitter; RFC 8415 15: RT = 2*RTprev + RAND*RTprev), capped
at ``ANCHORD_DHCP_BACKOFF_MAX``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Successive retransmission delays: ``initial`` doubling up to ``cap``, with jitter."""

    initial: float = 4.0
    cap: float = 300.0
    jitter: float = 0.1  # fraction of the delay, both ways (RFC 8415 RAND in [-0.1, 0.1])
    rng: random.Random = field(default_factory=random.Random)
    _current: float = 0.0

    def reset(self) -> None:
        self._current = 0.0

    def next(self) -> float:
        """The next delay in seconds; never above ``cap``, never below a tenth of a second."""
        base = self.initial if self._current == 0.0 else min(self._current * 2, self.cap)
        self._current = base
        delay = base + base * self.jitter * self.rng.uniform(-1.0, 1.0)
        return max(0.1, min(delay, self.cap))
