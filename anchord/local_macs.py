"""The MACs of this network namespace's interfaces: how anchord recognises its own container.

Owns one read-only question to the kernel (an ioctl per interface), asked by discovery to find
the container whose network endpoint shares our namespace (``docker_inspect.find_self``).
"""

from __future__ import annotations

import fcntl
import socket
import struct


def local_macs() -> set[str]:
    """MACs of this network namespace's interfaces (netlink-free: SIOCGIFHWADDR).

    ``/sys/class/net`` would show the namespace sysfs was mounted in, not necessarily ours.
    """
    macs: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            mac = ":".join(f"{b:02x}" for b in raw[18:24])
            if mac != "00:00:00:00:00:00":
                macs.add(mac)
    return macs
