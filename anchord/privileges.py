"""Least privilege of the network-anchor's programs (F-21): who runs as whom, holding what.

supervisord starts every program as root; each one sets its own privileges first thing in
``anchord worker NAME`` (after its logging is set up: the container console is a file of the
entry process under /proc, which only root may open, and stays open across the switch):

- ``bus``, ``discovery``, ``metrics`` — the processes that parse Docker's JSON, serve HTTP and
  relay every message — become the user ``anchord`` (a fixed uid/gid the image creates), with no
  supplementary group, no capability and no_new_privs (no setuid binary or file capability can
  give one back). Discovery alone also gets the group of the Docker socket when DOCKER_HOST
  names a unix socket it could not otherwise open (the stacks that mount the socket itself
  rather than the proxy's TCP address).
- ``dhcp``, ``nat-writer``, ``conntrack-flusher`` stay root but keep only CAP_NET_ADMIN and
  CAP_NET_RAW (the container also grants SETUID, SETGID and KILL, which only the switch above
  and supervisord need), with no_new_privs as well.

They switch themselves rather than through supervisord's ``user=``: such a program could not
open the console, and the switch can depend on the account existing. Where it does not (the
integration tests run the real supervisord and programs on the host, where no ``anchord`` user
exists), every program keeps what it was started with and says so in one warning line; the
image always has the account. The entry process shares the run directory with the account's
group (``bus.rundir.prepare_run_dir``) on the same condition.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ACCOUNT = "anchord"
UNPRIVILEGED = frozenset({"bus", "discovery", "metrics"})
NETWORK = frozenset({"dhcp", "nat-writer", "conntrack-flusher"})
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NETWORK_CAPS = (CAP_NET_ADMIN, CAP_NET_RAW)

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


# What the container must grant beyond NET_ADMIN and NET_RAW for the switch: SETGID and SETUID
# for the programs to become the account, KILL for supervisord and the entry process to stop
# them (root may signal another user's process only with it).
SWITCH_CAPS = {"SETGID": CAP_SETGID, "SETUID": CAP_SETUID, "KILL": CAP_KILL}


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


class PrivilegeError(RuntimeError):
    """A switch that was due and did not happen: the program must not run."""


def account(name: str = ACCOUNT) -> Account | None:
    """The unprivileged account, or None where it does not exist (outside the image)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def shared_group() -> int | None:
    """The gid the run directory is shared with: the account's, if anchord is root and the
    account exists; None means a run directory of root's alone (mode 0700)."""
    found = account()
    return found.gid if found is not None and os.geteuid() == 0 else None


def missing_for_switch() -> list[str]:
    """The capabilities of SWITCH_CAPS this process lacks (empty: the switch can happen)."""
    effective = capabilities()["CapEff"]
    return [name for name, cap in SWITCH_CAPS.items() if not effective & (1 << cap)]


def docker_socket_group(docker_host: str) -> int | None:
    """The group to add so the account can open the Docker socket DOCKER_HOST names, or None
    (TCP, a socket anyone may open, or one that cannot be examined: the client says why)."""
    if not docker_host.startswith("unix://"):
        return None
    try:
        st = os.stat(docker_host[len("unix://"):])
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_mode & 0o006 == 0o006:
        return None
    return st.st_gid


def apply(program: str, docker_host: str = "") -> str:
    """Set this process's privileges for ``program``; returns what was done, for the log."""
    if os.geteuid() != 0:
        return "not started as root: keeps its privileges"
    found = account()
    if found is None:
        log.warning("no user %r here (the image has one): %s keeps the privileges it was "
                    "started with", ACCOUNT, program)
        return "no account: keeps its privileges"
    if program in UNPRIVILEGED:
        groups = []
        if program == "discovery":
            socket_gid = docker_socket_group(docker_host)
            if socket_gid is not None:
                groups.append(socket_gid)
        become(found, groups)
        extra = f", group {groups[0]} of the Docker socket" if groups else ""
        return f"user {found.name} (uid {found.uid}, gid {found.gid}{extra}), no capabilities"
    if program in NETWORK:
        keep_capabilities(NETWORK_CAPS)
        no_new_privs()
        return "root with CAP_NET_ADMIN and CAP_NET_RAW only"
    raise PrivilegeError(f"no privilege policy for program {program!r}")


def become(found: Account, groups: list[int]) -> None:
    """setgroups, setgid, setuid (root -> the account: every uid and gid, and with them every
    capability, goes), then no_new_privs; verified, since a half switch must not run."""
    os.setgroups(groups)
    os.setgid(found.gid)
    os.setuid(found.uid)
    no_new_privs()
    _libc().prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if os.getresuid() != (found.uid,) * 3 or os.getresgid() != (found.gid,) * 3:
        raise PrivilegeError(f"still {os.getresuid()}/{os.getresgid()} after the switch")
    held = capabilities()
    if held["CapEff"] or held["CapPrm"]:
        raise PrivilegeError(f"capabilities left after the switch: {held}")
    for variable, value in (("HOME", found.home), ("USER", found.name),
                            ("LOGNAME", found.name)):
        os.environ[variable] = value


def keep_capabilities(keep: tuple[int, ...]) -> None:
    """Reduce the permitted and effective sets to ``keep`` (and inheritable to none). Dropping
    needs no capability; the bounding set stays as the container has it (dropping from it needs
    CAP_SETPCAP), which no_new_privs makes moot: no exec can raise a set beyond this."""
    mask = 0
    for cap in keep:
        mask |= 1 << cap

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    for i in range(2):
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = part
        data[i].inheritable = 0
    libc = _libc()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset: {os.strerror(err)}")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    held = capabilities()
    if held["CapEff"] & ~mask or held["CapPrm"] & ~mask:
        raise PrivilegeError(f"capabilities beyond {mask:#x} left: {held}")


def no_new_privs() -> None:
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """The Cap* lines of /proc/<pid>/status as integers (CapEff, CapPrm, CapBnd, ...)."""
    caps = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cap"):
            key, value = line.split(":", 1)
            caps[key] = int(value.strip(), 16)
    return caps


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
