#!/usr/bin/env bash
# The one-command demo of anchord (`make demo`): one Compose project gets one LAN address by
# DHCP and its app answers LAN clients with their real address.
#
# Owns: building the two images (anchord with e2e/build-image.sh, the simulated LAN's hosts
# from e2e/compose/demo/lan), starting e2e/compose/demo/compose.yaml as project
# $ANCHORD_DEMO_PROJECT (default anchord-demo), waiting (with a deadline) for the LAN client's
# verdict, printing it, and leaving the stack running. Nothing is pulled from a registry and
# all traffic stays on the project's own internal bridges.
#
# Usage: e2e/demo.sh [--down] [--no-build] [-p PROJECT]
#   --down       take the demo stack down and exit
#   --no-build   use the images as they are
#   -p PROJECT   Compose project name (also the DHCP hostname)
# Environment: ANCHORD_IMAGE (anchord:test), ANCHORD_DEMO_TIMEOUT (seconds, 90).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=${ANCHORD_DEMO_PROJECT:-anchord-demo}
image=${ANCHORD_IMAGE:-anchord:test}
lan_image=${ANCHORD_LAN_IMAGE:-anchord-demo-lan:local}
timeout=${ANCHORD_DEMO_TIMEOUT:-90}
compose_file=$here/compose/demo/compose.yaml
down=0
build=1

while (($#)); do
    case $1 in
        --down) down=1; shift ;;
        --no-build) build=0; shift ;;
        -p) project=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { printf 'demo: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
dc() {
    ANCHORD_IMAGE=$image ANCHORD_LAN_IMAGE=$lan_image \
        docker compose -p "$project" -f "$compose_file" "$@"
}

[[ $(id -u) -eq 0 ]] || die "run as root (dockerd, sysctls)"

if ((down)); then
    dc down -v --remove-orphans -t 30
    exit 0
fi

# `make demo` prepared the host already; run directly, the script does it (idempotent).
if ! docker info >/dev/null 2>&1 || ! docker compose version >/dev/null 2>&1 \
    || ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    log "preparing the host (e2e/prepare-host.sh)"
    bash "$here/prepare-host.sh"
fi
# A LAN simulated on a Docker bridge: bridged frames must not go through iptables, or Docker's
# rules for internal networks drop the DHCPDISCOVER (source 0.0.0.0). See prepare-host.sh.
for key in bridge-nf-call-iptables bridge-nf-call-ip6tables; do
    f=/proc/sys/net/bridge/$key
    if [[ -e $f && $(<"$f") != 0 ]]; then echo 0 >"$f"; fi
done

if ((build)); then
    log "building $image (e2e/build-image.sh)"
    bash "$here/build-image.sh" -t "$image"
    log "building $lan_image (dnsmasq, LAN client, demo app)"
    DOCKER_BUILDKIT=0 docker build -q -t "$lan_image" "$here/compose/demo/lan" >/dev/null
fi

log "starting project $project (a fresh one: an older demo stack is taken down first)"
dc down -v --remove-orphans -t 30 >/dev/null 2>&1 || true
dc up -d --no-build --pull never
up_done=$SECONDS
up_ns=$(date +%s%N)

log "waiting up to ${timeout}s for the LAN client to reach the app"
verdict=""
while :; do
    verdict=$(dc logs --no-color --no-log-prefix client 2>/dev/null \
        | grep -m1 -e '^the app saw you as' -e '^client: no answer' || true)
    [[ -n $verdict ]] && break
    if ((SECONDS - up_done >= timeout)); then
        break
    fi
    sleep 0.2
done
elapsed_ms=$((($(date +%s%N) - up_ns) / 1000000))

if [[ $verdict != "the app saw you as"* ]]; then
    log "no answer after ${timeout}s; what the stack says:"
    dc ps -a >&2 || true
    dc logs --no-color --tail 30 >&2 || true
    log "the stack is left running for a look; take it down with: bash e2e/demo.sh --down -p $project"
    exit 1
fi

lease=$(dc exec -T dhcp cat /var/lib/misc/dnsmasq.leases 2>/dev/null || true)
address=${verdict##* got }
address=${address%% *}
cat <<EOF

  $verdict
  (the client reached the app $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s after \`compose up\` returned)

  The DHCP server's lease table (e2e/compose/demo/lan, dnsmasq):
$(sed 's/^/    /' <<<"$lease")

The stack is running. Look around:
  docker compose -p $project exec anchord anchord status          # lease, exposed ports, workers
  docker compose -p $project exec anchord anchord status --json
  docker compose -p $project exec anchord supervisorctl status    # the workers
  docker compose -p $project exec anchord nft list ruleset        # DNAT maps, masquerade
  docker compose -p $project logs -f anchord                      # JSON lines of every worker
  docker compose -p $project exec client python3 /demo/lantool.py query tcp $address 8080
Take it down:
  bash e2e/demo.sh --down -p $project    (or: docker compose -p $project down -v)
EOF
