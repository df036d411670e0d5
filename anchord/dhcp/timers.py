"""Retransmission timing of the DHCP clients: the shared backoff with the RFCs' jitter.

Owns the DHCP clients' policy (RFC 2131 4.1: 4 s doubling with +-1 s jitter; RFC 8415 15:
RT = 2*RTprev + RAND*RTprev, RAND in [-0.1, 0.1]), capped at ``ANCHORD_DHCP_BACKOFF_MAX``. The
backoff itself is ``anchord.backoff.Backoff``; only the default jitter is DHCP's.
"""

from __future__ import annotations

from dataclasses import dataclass

from anchord import backoff

RFC_JITTER = 0.1


@dataclass
class Backoff(backoff.Backoff):
    """``anchord.backoff.Backoff`` with DHCP's defaults (4 s, 300 s, 10 % jitter)."""

    initial: float = 4.0
    cap: float = 300.0
    jitter: float = RFC_JITTER
