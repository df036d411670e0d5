#!/bin/sh
# The simulated LAN's DHCP and DNS server: dnsmasq on the only interface of this container.
# Docker gives the container an address of the Docker network's own subnet; the LAN that
# anchord sees is another subnet on the same bridge (LAN_PREFIX, default 10.77.0), so the
# anchord container's own Docker address on that bridge never competes with the leased one.
# --no-ping: dnsmasq otherwise pings an address for ~3 s before its first offer.
# IPv6 (when LAN6_PREFIX is set and the interface has IPv6): router advertisements and
# stateful DHCPv6 for LAN6_PREFIX::/64.
set -eu
IFACE=${LAN_IFACE:-eth0}
P=${LAN_PREFIX:-10.77.0}
ip addr add "$P.1/24" dev "$IFACE"
set -- --no-daemon --log-dhcp --log-queries --user=root \
    --no-resolv --no-hosts --interface="$IFACE" --bind-interfaces \
    --domain=lan --local=/lan/ \
    --dhcp-authoritative --no-ping --dhcp-leasefile=/var/lib/misc/dnsmasq.leases \
    --dhcp-range="$P.100,$P.199,255.255.255.0,${LEASE_TIME:-10m}"
if [ -n "${LAN6_PREFIX:-}" ] && [ -e "/proc/sys/net/ipv6/conf/$IFACE" ]; then
    ip -6 addr add "$LAN6_PREFIX::1/64" dev "$IFACE" nodad
    set -- "$@" --enable-ra \
        --dhcp-range="$LAN6_PREFIX::100,$LAN6_PREFIX::1ff,64,${LEASE_TIME:-10m}" \
        --ra-param="$IFACE,5"
fi
mkdir -p /var/lib/misc
: >/var/lib/misc/dnsmasq.leases
echo "dhcp-server: dnsmasq on $IFACE, LAN $P.0/24${LAN6_PREFIX:+ and $LAN6_PREFIX::/64}"
exec dnsmasq "$@"
