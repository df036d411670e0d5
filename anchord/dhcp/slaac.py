"""SLAAC from the client's side: which address is the project's, and when to solicit a router.

Owns two decisions of stateless autoconfiguration, the address forming itself
being the kernel's (the link module turns it on):

- ``project_address``: of the child's addresses, the one that is the
  project's: global, not temporary (RFC 8981), not deprecated (preferred
  lifetime left), DAD passed, not the DHCPv6 lease. The current one is kept
  while it stays eligible (or, deprecated, until a successor has passed DAD);
  otherwise the one the router prefers longest wins,
  so after renumbering (the old prefix announced with preferred lifetime 0,
  RFC 4862 5.5.3) the new prefix's address takes over at the first RA that
  deprecates the old one.
- ``RouterSolicitations``: when the next Router Solicitation goes out, RFC
  7559: a random delay of up to MAX_RTR_SOLICITATION_DELAY, then
  RTR_SOLICITATION_INTERVAL doubling (RT = 2·RTprev ± 10 %) up to
  MAX_RTR_SOLICITATION_INTERVAL, forever, until a Router Advertisement is seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from anchord.dhcp.kernel6 import (
    IFA_F_DEPRECATED,
    IFA_F_PERMANENT,
    IFA_F_TEMPORARY,
    RT_SCOPE_UNIVERSE,
    Addr6,
)
from anchord.dhcp.timers import Backoff

MAX_RTR_SOLICITATION_DELAY = 1.0  # RFC 4861 10
RTR_SOLICITATION_INTERVAL = 4.0  # RFC 4861 10: the first retransmission
MAX_RTR_SOLICITATION_INTERVAL = 3600.0  # RFC 7559 2


def eligible(a: Addr6) -> bool:
    return (a.scope == RT_SCOPE_UNIVERSE and a.usable and a.preferred > 0
            and not a.flags & (IFA_F_TEMPORARY | IFA_F_DEPRECATED | IFA_F_PERMANENT))


def project_address(found: Iterable[Addr6], exclude: str = "",
                    current: str = "") -> Addr6 | None:
    """The project's SLAAC address among ``found`` (None if there is none)."""
    found = list(found)
    candidates = [a for a in found if eligible(a) and a.address != exclude]
    for a in candidates:
        if a.address == current:
            return a
    if not candidates:
        # Renumbering: the old address is deprecated a second or two before the new one has
        # passed DAD. The current one, still valid, stays the project's meanwhile rather than
        # the project losing its address for that time; a deprecated one is never newly chosen.
        return next((a for a in found if a.address == current and a.usable
                     and a.scope == RT_SCOPE_UNIVERSE and a.valid > 0
                     and not a.flags & (IFA_F_TEMPORARY | IFA_F_PERMANENT)), None)
    # Longest preferred lifetime first; the address itself breaks ties, so the choice is
    # stable from one look to the next.
    return min(candidates, key=lambda a: (-a.preferred, a.address))


class RouterSolicitations:
    """The RS schedule of RFC 7559 (RFC 8415's algorithm with IRT 4 s, MRT 3600 s)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.backoff = Backoff(initial=RTR_SOLICITATION_INTERVAL,
                               cap=MAX_RTR_SOLICITATION_INTERVAL, jitter=0.1, rng=rng)
        self.next = 0.0
        self.sent = 0
        self.done = False

    def restart(self, now: float) -> None:
        """A new link (or carrier back): solicit again after a random initial delay."""
        self.backoff.reset()
        self.sent = 0
        self.done = False
        self.next = now + self.rng.uniform(0.0, MAX_RTR_SOLICITATION_DELAY)

    def due(self, now: float) -> bool:
        return not self.done and now >= self.next

    def sent_one(self, now: float) -> None:
        self.sent += 1
        self.next = now + self.backoff.next()

    def advert_seen(self) -> None:
        self.done = True
