"""The lease file: where a lease survives a restart of the worker or of the container.

Owns the file format (JSON, one object per family), the atomic write (temporary
file + fsync + rename, so a crash leaves the old file or the new one, never half)
and the validation on read: the file is input like any packet, so a corrupt,
foreign (another MAC or interface) or ill-typed file is ignored with a warning.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1
MAX_BYTES = 64 * 1024  # a real file is a few hundred bytes; more is not ours
# Lifetimes are 32-bit seconds on the wire (0xffffffff: infinite).
MAX_LIFETIME = float(0xFFFFFFFF)
# A lease acquired further in the future than this is a file from a wrong clock or forged.
FUTURE_SLACK = 86400.0
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class StoredLease:
    """One family's lease as kept on disk (times are unix seconds)."""

    family: int
    address: str  # without prefix
    prefixlen: int
    server: str  # server identifier (v4 address) or server DUID hex (v6)
    router: str
    lease_time: float
    t1: float
    t2: float
    acquired: float  # wall time the lease was granted
    iaid: int = 0  # DHCPv6 only
    preferred: float = 0.0  # DHCPv6 preferred lifetime
    server_mac: str = ""  # DHCPv4: L2 next hop towards the server, for unicast renewals

    @property
    def expiry(self) -> float:
        return self.acquired + self.lease_time


class LeaseFile:
    """``<state_dir>/<iface>.lease``: the leases of one external interface."""

    def __init__(self, state_dir: Path, iface: str, mac: str) -> None:
        self.path = state_dir / f"{iface}.lease"
        self.iface = iface
        self.mac = mac.lower()

    def load(self) -> dict[int, StoredLease]:
        """The stored leases by family; {} (with a warning) if missing parts are bad."""
        try:
            raw = self._read()
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("lease file unreadable, ignored",
                        extra={"fields": {"path": str(self.path), "error": str(exc)}})
            return {}
        try:
            doc = json.loads(raw)
            return self._validate(doc)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            log.warning("lease file corrupt or foreign, ignored",
                        extra={"fields": {"path": str(self.path), "error": str(exc)[:200]}})
            return {}

    def _read(self) -> str:
        # Never through a symlink (the state volume is the user's; a link could point the
        # worker at any file), never more than MAX_BYTES.
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        return data.decode("utf-8")

    def _validate(self, doc: Any) -> dict[int, StoredLease]:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not an anchord lease file of format 1")
        if doc.get("mac") != self.mac or doc.get("iface") != self.iface:
            raise ValueError(f"lease file of {doc.get('iface')}/{doc.get('mac')}, "
                             f"not {self.iface}/{self.mac}")
        leases = doc.get("leases")
        if not isinstance(leases, list):
            raise ValueError("leases is not a list")
        out: dict[int, StoredLease] = {}
        for item in leases:
            lease = _lease_from(item)
            out[lease.family] = lease
        return out

    def save(self, leases: dict[int, StoredLease]) -> None:
        """Replace the file atomically with ``leases`` (an empty dict removes the file)."""
        if not leases:
            self.remove()
            return
        doc = {"format": FORMAT, "iface": self.iface, "mac": self.mac,
               "leases": [asdict(lease) for lease in leases.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _num(item: dict[str, Any], key: str, default: float | None = None,
         maximum: float = MAX_LIFETIME) -> float:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is not a number")
    number = float(value) if not isinstance(value, int) or abs(value) < 2**63 else math.inf
    # NaN, 1e309 (inf) and absurd values would reach the kernel as lifetimes.
    if not math.isfinite(number) or not 0 <= number <= maximum:
        raise ValueError(f"{key} is not a number from 0 to {maximum:.0f}")
    return number


def _lease_from(item: Any) -> StoredLease:
    if not isinstance(item, dict):
        raise ValueError("lease is not an object")
    family = item.get("family")
    if family not in (4, 6):
        raise ValueError("family is not 4 or 6")
    address = ipaddress.ip_address(str(item["address"]))
    if address.version != family or address.is_multicast or address.is_unspecified:
        raise ValueError("address is not a unicast address of its family")
    prefixlen = item.get("prefixlen")
    if isinstance(prefixlen, bool) or not isinstance(prefixlen, int) \
            or not 1 <= prefixlen <= (32 if family == 4 else 128):
        raise ValueError("bad prefixlen")
    router = str(item.get("router", ""))
    if router:
        ipaddress.ip_address(router)
    server = item.get("server", "")
    if not isinstance(server, str) or len(server) > 300:
        raise ValueError("bad server")
    server_mac = item.get("server_mac", "")
    if not isinstance(server_mac, str) or (server_mac and not _MAC.match(server_mac)):
        raise ValueError("bad server_mac")
    iaid = item.get("iaid", 0)
    if isinstance(iaid, bool) or not isinstance(iaid, int) or not 0 <= iaid < 2**32:
        raise ValueError("bad iaid")
    acquired = _num(item, "acquired", maximum=time.time() + FUTURE_SLACK)
    return StoredLease(
        family=family, address=str(address), prefixlen=prefixlen, server=server, router=router,
        lease_time=_num(item, "lease_time"), t1=_num(item, "t1"), t2=_num(item, "t2"),
        acquired=acquired, iaid=iaid, preferred=_num(item, "preferred", 0.0),
        server_mac=server_mac,
    )
