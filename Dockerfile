# anchord: one image for both roles (network-anchor, service-anchor); the role comes from
# ANCHORD_MODE (or `command: [service-anchor]`), so there is no CMD.
#
# How to build
# - Supported way, works with no registry access at all: `e2e/build-image.sh [-t TAG]`.
#   It builds wheels of anchord and of every dependency on the host into .build/wheels/
#   (inside this build context) and then runs `docker build`; the image installs them with
#   `pip --no-index`, so nothing is fetched from PyPI inside the build.
# - With registry access, plain `docker build -t anchord .` builds the same image: when
#   .build/wheels/ holds no anchord wheel, pip installs anchord from the source in the context
#   and its dependencies from PyPI.
# Either way the base is debian:bookworm-slim (e2e/prepare-host.sh makes an identical one with
# debootstrap where no registry can be pulled from).

ARG BASE_IMAGE=debian:bookworm-slim

# ---- build stage: a venv with anchord and its dependencies ------------------------------------
FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /opt/anchord \
    && if ls /src/.build/wheels/anchord-*.whl >/dev/null 2>&1; then \
         /opt/anchord/bin/pip install --no-cache-dir --no-index --disable-pip-version-check \
           --find-links /src/.build/wheels anchord; \
       else \
         /opt/anchord/bin/pip install --no-cache-dir --disable-pip-version-check /src; \
       fi \
    && /opt/anchord/bin/pip uninstall -y --disable-pip-version-check pip setuptools \
    && find /opt/anchord -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
         -exec rm -rf {} +

# ---- runtime stage ------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# nftables brings libnftables1 (used in-process) and nft; netbase gives it /etc/protocols and
# /etc/services (without them "tcp" cannot be resolved); conntrack and iproute2 are for
# operators poking at the kernel state from `docker compose exec`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 nftables conntrack iproute2 netbase \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/anchord /opt/anchord
COPY supervisord.conf /etc/anchord/supervisord.conf
COPY anchord/healthcheck.sh /usr/local/bin/anchord-healthcheck
ENV PATH=/opt/anchord/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# supervisorctl finds its configuration at /etc/supervisord.conf with no arguments.
# The user the bus, discovery and metrics switch to (anchord/privileges.py): a fixed uid/gid, no
# home, no shell. The run directory is made here because the container's root has no CAP_CHOWN
# to give it its group at run time: root's and the group's alone, sticky (bus/broker.py says
# who reaches what through these modes).
RUN ln -s /etc/anchord/supervisord.conf /etc/supervisord.conf \
    && groupadd --system --gid 6480 anchord \
    && useradd --system --uid 6480 --gid anchord --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin anchord \
    && install -d -o root -g anchord -m 1770 /run/anchord \
    && install -d -o root -g root -m 0755 /var/log/anchord \
    && chmod 0755 /usr/local/bin/anchord-healthcheck \
    && anchord --help >/dev/null
# The check works whether or not the metrics listener is enabled. Every 5 s: apps gate on their
# service-anchor's service_healthy (README), and Docker's first check comes an interval after
# the start (Docker 20.10 has no start-interval), so a longer one delays them. Each run costs the host ~75 ms of CPU in dockerd, containerd and runc
# whatever it runs, and a Python start ~40 ms more: anchord-healthcheck (anchord/healthcheck.sh)
# answers the healthy case in sh and leaves every other one to `anchord healthcheck`.
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=3 \
    CMD ["anchord-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["anchord"]
