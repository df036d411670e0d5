#!/bin/sh
# The simulated LAN's DHCP service of e2e/test_dhcp_scenarios.py, configured from the
# environment (the container's only interface is the LAN):
#   SERVER      dnsmasq | kea (kea-dhcp4 / kea-dhcp6, radvd for the router advertisements)
#   MODE        v4 | slaac | both (v4 + SLAAC) | stateful (DHCPv6 only, RA with M) |
#               none (a server is running but offers nothing on this LAN: its only range is
#               another subnet, so the project's requests go unanswered)
#   LAN_PREFIX (10.77.0), LAN6_PREFIX (fd77:0:0:1), LEASE_TIME, T1, T2 (seconds; dnsmasq's
#               shortest lease is 120 s, T1/T2 make renewals come sooner)
# Lease tables: /var/lib/misc/dnsmasq.leases, /leases/kea-leases4.csv, /leases/kea-leases6.csv.
#
#   lan-server.sh reserve MAC IP   (in the running container) reserve IP for MAC and reload the
#       server the way an administrator does (dnsmasq rereads its hosts file on SIGHUP, Kea its
#       configuration): the client's next renewal of another address is refused (DHCPNAK).
set -eu
IFACE=${LAN_IFACE:-eth0}
P=${LAN_PREFIX:-10.77.0}
P6=${LAN6_PREFIX:-fd77:0:0:1}
MODE=${MODE:-both}
SERVER=${SERVER:-dnsmasq}
LEASE_TIME=${LEASE_TIME:-120}
T1=${T1:-$((LEASE_TIME / 2))}
T2=${T2:-$((LEASE_TIME * 7 / 8))}
RUN=/dhcp/run
RESERVATIONS=$RUN/reservations  # "MAC IP" per line

v4() { case $MODE in v4|both) return 0 ;; *) return 1 ;; esac; }

kea4_conf() {
    # Reservations as JSON objects, comma separated.
    res=$(awk 'NF == 2 { printf "%s{\"hw-address\": \"%s\", \"ip-address\": \"%s\"}", sep, $1, $2; sep = ", " }' "$RESERVATIONS")
    subnet=$P; [ "$MODE" = none ] && subnet=10.99.0
    cat >"$RUN/kea4.json" <<JSON
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["$IFACE"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "lfc-interval": 0,
                     "name": "/leases/kea-leases4.csv"},
  "valid-lifetime": $LEASE_TIME, "renew-timer": $T1, "rebind-timer": $T2,
  "authoritative": true,
  "subnet4": [{"id": 1, "subnet": "$subnet.0/24",
               $( [ "$MODE" = none ] || echo "\"interface\": \"$IFACE\",")
               "pools": [{"pool": "$subnet.100 - $subnet.199"}],
               "option-data": [{"name": "routers", "data": "$subnet.1"}],
               "reservations": [$res]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "INFO", "output_options": [{"output": "stdout"}]}]
}}
JSON
}

kea6_conf() {
    cat >"$RUN/kea6.json" <<JSON
{"Dhcp6": {
  "interfaces-config": {"interfaces": ["$IFACE"]},
  "lease-database": {"type": "memfile", "persist": true, "lfc-interval": 0,
                     "name": "/leases/kea-leases6.csv"},
  "preferred-lifetime": $((LEASE_TIME * 3 / 4)), "valid-lifetime": $LEASE_TIME,
  "renew-timer": $T1, "rebind-timer": $T2,
  "server-id": {"type": "LL", "htype": 1, "identifier": "020000000001", "persist": false},
  "subnet6": [{"id": 1, "subnet": "$P6::/64", "interface": "$IFACE",
               "pools": [{"pool": "$P6::100 - $P6::1ff"}]}],
  "loggers": [{"name": "kea-dhcp6", "severity": "INFO", "output_options": [{"output": "stdout"}]}]
}}
JSON
}

dnsmasq_hosts() {
    awk 'NF == 2 { print $1 "," $2 }' "$RESERVATIONS" >"$RUN/dnsmasq.hosts"
}

if [ "${1:-}" = reserve ]; then
    echo "$2 $3" >"$RESERVATIONS"
    if [ "$SERVER" = kea ]; then
        kea4_conf
        kill -HUP "$(cat "$RUN/kea4.pid")"
    else
        dnsmasq_hosts
        kill -HUP "$(cat "$RUN/dnsmasq.pid")"
    fi
    echo "lan-server: reserved $3 for $2, $SERVER reloaded"
    exit 0
fi

mkdir -p "$RUN" /leases /var/lib/misc /run/kea
: >"$RESERVATIONS"
rm -f "$RUN/ready"
# The LAN's own subnet only: Docker's address on the bridge would otherwise be the server
# identifier a client renews with.
ip -4 addr flush dev "$IFACE"
ip addr add "$P.1/24" dev "$IFACE"
case $MODE in slaac|both|stateful)
    ip -6 addr add "$P6::1/64" dev "$IFACE" nodad
    # kea-dhcp6 binds the link-local address once at start (and gives up if it is still
    # tentative, duplicate address detection); radvd sends from it too.
    i=0
    while ip -6 addr show dev "$IFACE" scope link | grep -q tentative; do
        i=$((i + 1)); [ $i -gt 100 ] && break
        sleep 0.1
    done
    ;;
esac

pids=""
spawn() { "$@" & pids="$pids $!"; echo "$!" >"$RUN/$SPAWN_NAME.pid"; }
trap 'kill $pids 2>/dev/null; exit 0' TERM INT

if [ "$SERVER" = kea ]; then
    export KEA_PIDFILE_DIR=/run/kea KEA_LOCKFILE_DIR=/run/kea
    if v4 || [ "$MODE" = none ]; then
        kea4_conf
        SPAWN_NAME=kea4 spawn kea-dhcp4 -c "$RUN/kea4.json"
    fi
    if [ "$MODE" = stateful ]; then
        kea6_conf
        SPAWN_NAME=kea6 spawn kea-dhcp6 -c "$RUN/kea6.json"
    fi
    case $MODE in slaac|both|stateful)
        managed=off autonomous=on
        [ "$MODE" = stateful ] && managed=on autonomous=off
        cat >"$RUN/radvd.conf" <<CONF
interface $IFACE {
    AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 4; AdvManagedFlag $managed;
    prefix $P6::/64 { AdvOnLink on; AdvAutonomous $autonomous; };
};
CONF
        SPAWN_NAME=radvd spawn radvd --nodaemon -C "$RUN/radvd.conf" -p "$RUN/radvd.own.pid" -m stderr
    esac
else
    dnsmasq_hosts
    set -- --no-daemon --log-dhcp --log-facility=- --user=root --port=0 --conf-file=/dev/null \
        --interface="$IFACE" --bind-interfaces --dhcp-authoritative --no-ping \
        --dhcp-leasefile=/var/lib/misc/dnsmasq.leases --dhcp-hostsfile="$RUN/dnsmasq.hosts"
    case $MODE in
        v4|both) set -- "$@" --dhcp-range="$P.100,$P.199,255.255.255.0,$LEASE_TIME" \
                     --dhcp-option=option:T1,"$T1" --dhcp-option=option:T2,"$T2" ;;
        none) set -- "$@" --dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0 ;;
    esac
    case $MODE in
        slaac|both) set -- "$@" --enable-ra --ra-param="$IFACE,4" --dhcp-range="$P6::,ra-only,64" ;;
        stateful) set -- "$@" --enable-ra --ra-param="$IFACE,4" \
                      --dhcp-range="$P6::100,$P6::1ff,64,$LEASE_TIME" ;;
    esac
    : >/var/lib/misc/dnsmasq.leases
    SPAWN_NAME=dnsmasq spawn dnsmasq "$@"
fi

# Ready (the compose healthcheck) once the DHCP sockets are bound: UDP 67 (0043) for v4,
# UDP 547 (0223) for DHCPv6.
i=0
while :; do
    ok=1
    if v4; then grep -q ':0043 ' /proc/net/udp || ok=0; fi
    if [ "$MODE" = stateful ]; then grep -q ':0223 ' /proc/net/udp6 || ok=0; fi
    [ $ok = 1 ] && break
    i=$((i + 1)); [ $i -gt 300 ] && { echo "lan-server: sockets not bound after 30 s" >&2; exit 1; }
    sleep 0.1
done
touch "$RUN/ready"
echo "lan-server: $SERVER, mode $MODE, LAN $P.0/24 $P6::/64, lease $LEASE_TIME s (T1 $T1, T2 $T2)"
wait
