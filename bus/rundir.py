"""The bus's run directory: its modes and the names of the broker's sockets in it.

The run directory (``ANCHORD_RUN_DIR``, /run/anchord) and its modes are prepared here
(``prepare_run_dir``), by the entry process, once, before supervisord starts:

- with the unprivileged account (the image): owner root, group ``anchord``, mode 1770. Root
  (the entry, supervisord, the dhcp/nat-writer/conntrack-flusher workers, ``docker exec``) enters
  as the owner; the bus, discovery and metrics, which run as ``anchord``, as the group — it must
  be writable for the broker's sockets and the readiness file. Nobody else enters, so what is
  inside may be open to "others" (root without CAP_DAC_OVERRIDE reaches a file of ``anchord``
  only through those bits). The sticky bit keeps the group from removing or replacing root's
  files in it (supervisord's socket and pid file, the shutdown and release markers).
- without it (the integration tests on a host): owner root, mode 0700, as before.

No zmq here: the entry process prepares the directory and imports only this.
"""

from __future__ import annotations

import os
from pathlib import Path

PUB_SOCKET = "pub.ipc"  # workers publish here (broker's XSUB)
SUB_SOCKET = "sub.ipc"  # workers subscribe here (broker's XPUB)


def endpoints(run_dir: Path) -> tuple[str, str]:
    """The (publish, subscribe) endpoints of the broker in ``run_dir``."""
    return f"ipc://{run_dir / PUB_SOCKET}", f"ipc://{run_dir / SUB_SOCKET}"


PRIVATE_MODE = 0o700
SHARED_MODE = 0o1770
# The broker's sockets: a root worker connects to them as "other" (see above); the directory
# is their guard.
SOCKET_MODE_SHARED = 0o666
SOCKET_MODE_PRIVATE = 0o600


class RunDirError(RuntimeError):
    """The run directory cannot be given the owner and mode it needs."""


def prepare_run_dir(run_dir: Path, group: int | None = None) -> None:
    """Create the run directory and set its group and mode: shared with ``group`` (mode 1770)
    or root's alone (``group`` None: mode 0700), tightening whatever it was."""
    run_dir.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
    try:
        if group is not None and run_dir.stat().st_gid != group:
            # Without CAP_CHOWN this works only if it has the group already: the image's
            # /run/anchord has; a directory mounted over it must be (tmpfs: gid=, mode=1770).
            os.chown(run_dir, -1, group)
        os.chmod(run_dir, PRIVATE_MODE if group is None else SHARED_MODE)
    except OSError as exc:
        want = "mode 0700" if group is None else f"group {group}, mode 1770"
        raise RunDirError(f"the run directory {run_dir} cannot be given {want} "
                          f"(owner {run_dir.stat().st_uid}, group {run_dir.stat().st_gid}): "
                          f"{exc.strerror}") from exc
