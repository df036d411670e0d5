"""Which Compose project the anchord container belongs to, asked of Docker at start.

Owns one question of the network-anchor's entry process, before any worker starts: the
``com.docker.compose.project`` label of this very container. With neither ``ANCHORD_PROJECT``
nor ``COMPOSE_PROJECT_NAME`` set, that label *is* the project (the DHCP hostname and the MAC
derive from it, so it must be known before the dhcp worker makes the child); with one set, a
different label is a mistake that would expose nothing, and is refused at start.

This container is found by its host name, which Docker sets to the first 12 hex digits of the
container id unless the Compose file overrides it; the answer is only believed when the id
starts with that name. One ``GET /containers/<host name>/json`` (allowed by the GET-only
proxy), through ``anchord.dockerhttp`` (standard library only): the entry process stays small.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from anchord.dockerhttp import ApiError, DockerHttp, HttpStatusError, MalformedAnswer, path

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
REQUEST_TIMEOUT = 3.0
_CONTAINER_ID_PREFIX = re.compile(r"^[0-9a-f]{12,64}$")


class SelfUnknown(Exception):
    """Docker did not (yet) say which project this container belongs to."""


def own_project(docker_host: str, hostname: str, timeout: float = REQUEST_TIMEOUT) -> str:
    """The Compose project label of the container whose id starts with ``hostname``."""
    host = hostname.strip().lower()
    if not _CONTAINER_ID_PREFIX.match(host):
        raise SelfUnknown(f"the host name {hostname!r} is not a container id (a `hostname:` in "
                          "the Compose file?), so Docker cannot be asked which container this is")
    try:
        with DockerHttp(docker_host, timeout=timeout) as client:
            doc = client.get(path("/containers/{}/json", host), versioned=False)
    except HttpStatusError as exc:
        raise SelfUnknown(f"the Docker API at {docker_host} answered {exc.status} for "
                          f"container {host}") from exc
    except MalformedAnswer as exc:
        raise SelfUnknown(f"unreadable answer from the Docker API: {exc}") from exc
    except ApiError as exc:
        raise SelfUnknown(f"no answer from the Docker API at {docker_host}: {exc}") from exc
    try:
        cid = str(doc.get("Id") or "")
        labels = (doc.get("Config") or {}).get("Labels") or {}
    except AttributeError as exc:
        raise SelfUnknown(f"unreadable answer from the Docker API: {exc}") from exc
    if not cid.startswith(host):
        raise SelfUnknown(f"container {host} is not this one (its id is {cid[:12]})")
    project = str(labels.get(PROJECT_LABEL) or "")
    if not project:
        raise SelfUnknown(f"this container has no {PROJECT_LABEL} label: it was not started "
                          "by Compose; set ANCHORD_PROJECT")
    return project


def wait_for_project(docker_host: str, hostname: str, deadline: float,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> str:
    """``own_project``, asked again with backoff (the socket proxy may start after us) until
    ``deadline`` (a ``clock`` value); the last ``SelfUnknown`` when it passes."""
    delay = 0.1
    logged = ""
    while True:
        try:
            return own_project(docker_host, hostname)
        except SelfUnknown as exc:
            if clock() + delay >= deadline:
                raise
            if str(exc) != logged:
                logged = str(exc)
                log.warning("waiting for Docker to say which Compose project this is",
                            extra={"fields": {"why": logged}})
            sleep(delay)
            delay = min(delay * 2, 2.0)
