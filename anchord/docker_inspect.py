"""Reading Docker's documents: container and network inspects, and events. Pure: no I/O.

Owns the interpretation discovery needs: what one container looks like to the table builder
(``anchord.labels.ContainerView``), which container is anchord itself, which network is the
transit network, which Compose networks the anchord container is on, what a network's options
say, and which container an event is about. The documents come from ``anchord.docker_api`` and
``anchord.docker_events``; nothing here talks to Docker or the kernel.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anchord.labels import EXPOSE_LABEL, ContainerView
from bus.events import NetworkAttachment

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NETWORK_LABEL = "com.docker.compose.network"

# Container actions that can change what a container contributes to the table.
# Not "kill": a signal changes nothing by itself (a "die" follows if the container exits),
# and an inspect right after it would wait on the container's lock for the whole stop.
CONTAINER_ACTIONS = frozenset(
    {"start", "restart", "die", "stop", "destroy", "pause", "unpause", "rename", "create",
     "update"}
)
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})

Inspect = Mapping[str, Any]  # one container inspect document, as Docker returns it


# --- events ----------------------------------------------------------------------------------


def relevant_container(ev: Mapping[str, Any], project: str) -> str | None:
    """The container id a Docker event is about, if it may matter to ``project``.

    Container events carry the container's labels, so they are filtered on the project
    here. Network events carry only the network's name and the container id: they are
    returned and the caller decides after reading the container.
    """
    kind = ev.get("Type")
    action = str(ev.get("Action") or ev.get("status") or "")
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    if kind == "container":
        if attrs.get(PROJECT_LABEL) != project:
            return None
        if action in CONTAINER_ACTIONS or action.startswith("health_status"):
            return str(actor.get("ID") or ev.get("id") or "") or None
        return None
    if kind == "network" and action in NETWORK_ACTIONS:
        return str(attrs.get("container") or "") or None
    return None


def event_network(ev: Mapping[str, Any]) -> tuple[str, str]:
    """(network id, network name) of a network event."""
    actor = ev.get("Actor") or {}
    return str(actor.get("ID") or ""), str((actor.get("Attributes") or {}).get("name") or "")


def event_time(ev: Mapping[str, Any]) -> float:
    """The event's own time, in unix seconds (``timeNano`` when present)."""
    nano = ev.get("timeNano")
    if isinstance(nano, int) and nano > 0:
        return nano / 1e9
    t = ev.get("time")
    return float(t) if isinstance(t, (int, float)) else 0.0


# --- inspect documents -----------------------------------------------------------------------


def parse_time(value: str) -> float:
    """Docker's RFC 3339 time with nanoseconds (UTC, ``Z``) in unix seconds; 0.0 if unset."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", value or "")
    if not m or m.group(1).startswith("0001"):
        return 0.0
    whole = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{m.group(2) or '0'}")


def fingerprint(info: Inspect | None) -> tuple[object, ...] | None:
    """Everything of a container that discovery's output depends on (None: no container)."""
    if info is None:
        return None
    nets = tuple(sorted(
        (name, str(n.get("IPAddress") or ""), str(n.get("GlobalIPv6Address") or ""),
         str(n.get("MacAddress") or ""), str(n.get("NetworkID") or ""))
        for name, n in networks_of(info).items()))
    return (is_running(info), health_of(info), name_of(info), str(info.get("Created", "")),
            tuple(sorted(labels_of(info).items())), nets,
            str((info.get("HostConfig") or {}).get("NetworkMode") or ""))


def stopped(info: Inspect) -> Inspect:
    """``info`` as it reads once the container stopped (a ``die`` event says so)."""
    state = dict(info.get("State") or {})
    state.update(Running=False, Paused=False, Restarting=False)
    return {**info, "State": state}


def transition_time(before: Inspect | None, after: Inspect | None) -> float:
    """When Docker says the container started or stopped, if that happened between the two."""
    if after is None:
        return 0.0
    running = is_running(after)
    if before is not None and is_running(before) == running:
        return 0.0
    state = after.get("State") or {}
    return parse_time(str(state.get("StartedAt" if running else "FinishedAt") or ""))


def name_of(info: Inspect) -> str:
    return str(info.get("Name") or "").lstrip("/") or str(info.get("Id", ""))[:12]


def labels_of(info: Inspect) -> dict[str, str]:
    return dict((info.get("Config") or {}).get("Labels") or {})


def networks_of(info: Inspect) -> dict[str, Mapping[str, Any]]:
    return dict((info.get("NetworkSettings") or {}).get("Networks") or {})


def is_running(info: Inspect) -> bool:
    state = info.get("State") or {}
    return bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")


def health_of(info: Inspect) -> str:
    """Docker's health status ("starting", "healthy", "unhealthy"), "" without healthcheck."""
    health = (info.get("State") or {}).get("Health")
    return str(health.get("Status") or "") if isinstance(health, Mapping) else ""


def transit_subnets(self_info: Inspect, transit_network: str) -> tuple[IPNetwork, ...]:
    """The transit network's subnets, as anchord's own addresses on it say."""
    net = networks_of(self_info).get(transit_network) or {}
    out: list[IPNetwork] = []
    for addr_key, len_key in (("IPAddress", "IPPrefixLen"),
                              ("GlobalIPv6Address", "GlobalIPv6PrefixLen")):
        address, prefix = net.get(addr_key), net.get(len_key)
        if address and isinstance(prefix, int) and prefix > 0:
            try:
                out.append(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
            except ValueError:
                continue
    return tuple(out)


def outside(address: str, subnets: Sequence[IPNetwork]) -> bool:
    """Whether a backend address Docker gave lies outside the transit subnets (never DNATed
    to: a value from Docker is checked before it reaches the kernel, F-22)."""
    if not address or not subnets:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return not any(ip.version == net.version and ip in net for net in subnets)


def container_view(info: Inspect, transit_network: str,
                   names: Mapping[str, str] | None = None,
                   subnets: Sequence[IPNetwork] = (), route_v4: bool = False) -> ContainerView:
    """What the table builder needs from one inspect document. An address outside
    ``subnets`` counts as none (the container is then reported as without transit)."""
    labels = labels_of(info)
    net = networks_of(info).get(transit_network) if transit_network else None
    running = is_running(info)
    health = health_of(info)
    mode = str((info.get("HostConfig") or {}).get("NetworkMode") or "")
    owner = ""
    if mode.startswith("container:"):
        owner_id = mode.split(":", 1)[1]
        owner = (names or {}).get(owner_id, owner_id[:12])
    return ContainerView(
        id=str(info.get("Id", "")),
        name=name_of(info),
        created=str(info.get("Created", "")),
        labels=tuple(sorted(labels.items())),
        service=labels.get(SERVICE_LABEL, ""),
        running=running,
        healthy=health in ("", "healthy"),
        health=health,
        route_v4=route_v4,
        # A stopped container keeps its network entry with stale or empty addresses.
        transit_v4=_checked(str(net.get("IPAddress") or ""), subnets) if net and running
        else "",
        transit_v6=_checked(str(net.get("GlobalIPv6Address") or ""), subnets)
        if net and running else "",
        network_owner=owner,
    )


def _checked(address: str, subnets: Sequence[IPNetwork]) -> str:
    return "" if outside(address, subnets) else address


def find_self(
    infos: Iterable[Inspect], macs: set[str], hostname: str
) -> tuple[Inspect | None, str]:
    """The anchord container among the project's containers, and why we think so.

    First by MAC: a container whose network endpoint has the MAC of one of our own
    interfaces shares our network namespace, which is proof (and works with a custom
    ``hostname:``). Then by host name: Docker sets it to the first 12 hex digits of the
    container id unless the compose file overrides it.
    """
    infos = list(infos)
    for info in infos:
        for net_name, net in networks_of(info).items():
            mac = str(net.get("MacAddress") or "").lower()
            if mac and mac in macs:
                return info, (f"its MAC {mac} on network {net_name} belongs to an interface of "
                              f"this network namespace")
    host = hostname.strip().lower()
    if len(host) >= 12:
        for info in infos:
            if str(info.get("Id", "")).startswith(host):
                return info, f"its id starts with this host name {host}"
    return None, (f"no container of the project has a MAC of this namespace "
                  f"({', '.join(sorted(macs)) or 'none'}) or an id starting with the host "
                  f"name {host!r}")


# The bridge driver option that keeps the host's IPv4 address off a network's bridge.
INHIBIT_IPV4_OPTION = "com.docker.network.bridge.inhibit_ipv4"
# The spellings of true that Docker's option parser (Go's strconv.ParseBool) accepts.
_GO_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})


@dataclass(frozen=True)
class NetworkFacts:
    """What discovery needs to know of one Docker network besides its containers."""

    labels: Mapping[str, str]
    internal: bool
    # The bridge carries no address of the host's (``inhibit_ipv4``): the IPAM gateway that
    # Docker gives every container as its default route is nobody's until anchord claims it.
    gateway_free: bool


def network_facts(doc: Mapping[str, Any]) -> NetworkFacts:
    """Read a network inspect document."""
    options = doc.get("Options") or {}
    return NetworkFacts(
        labels=dict(doc.get("Labels") or {}),
        internal=bool(doc.get("Internal")),
        gateway_free=str(options.get(INHIBIT_IPV4_OPTION, "")) in _GO_TRUE,
    )


def network_alias(name: str, labels: Mapping[str, str] | None, project: str) -> str:
    """The network's name in the compose file: its compose label, else ``<project>_`` stripped."""
    if labels and labels.get(NETWORK_LABEL):
        return str(labels[NETWORK_LABEL])
    prefix = f"{project}_"
    return name[len(prefix):] if name.startswith(prefix) else name


def attachments(self_info: Inspect, aliases: Mapping[str, str],
                claim: Iterable[str] = ()) -> tuple[NetworkAttachment, ...]:
    """The anchord container's networks, with the MAC and addresses it has on each; for the
    networks named in ``claim``, the IPv4 gateway Docker gave them (anchord's to take)."""
    result = []
    claimed = set(claim)
    for name, net in sorted(networks_of(self_info).items()):
        result.append(NetworkAttachment(
            network=name,
            alias=aliases.get(name, name),
            mac=str(net.get("MacAddress") or "").lower(),
            ipv4=str(net.get("IPAddress") or ""),
            ipv6=str(net.get("GlobalIPv6Address") or ""),
            gateway=str(net.get("Gateway") or "") if name in claimed else "",
        ))
    return tuple(result)


def choose_transit(self_info: Inspect, infos: Iterable[Inspect],
                   excluded: Iterable[str]) -> tuple[str, str]:
    """The transit network and why: the anchord network most labelled containers are on.

    ``excluded`` names networks that cannot be transit (the LAN parent). Ties go to the
    network name, so the choice is the same in every run. Containers count whatever
    their state: the choice must not flip while a backend restarts.
    """
    own = set(networks_of(self_info)) - set(excluded)
    self_id = self_info.get("Id")
    labelled = [i for i in infos if i.get("Id") != self_id and EXPOSE_LABEL in labels_of(i)]
    counts: dict[str, int] = {}
    for info in labelled:
        for net in networks_of(info):
            if net in own:
                counts[net] = counts.get(net, 0) + 1
    if counts:
        best = min(counts, key=lambda n: (-counts[n], n))
        others = ", ".join(f"{n} ({counts[n]})" for n in sorted(counts) if n != best)
        return best, (f"it is shared with {counts[best]} of the {len(labelled)} labelled "
                      f"container(s)" + (f"; other candidates: {others}" if others else ""))
    if len(own) == 1:
        (only,) = own
        return only, "it is the anchord container's only network besides the LAN parent"
    if not own:
        return "", "the anchord container has no network besides the LAN parent"
    return "", (f"no labelled container shares a network with the anchord container yet "
                f"(its networks: {', '.join(sorted(own))})")
