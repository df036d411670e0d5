#!/bin/sh
# The image's HEALTHCHECK (Dockerfile). Docker runs it every 5 s in every anchord container, so
# the healthy case is answered here, in sh, without starting Python: the process that judges
# readiness keeps <run dir>/ready holding its pid, renewed on every write while ready and
# removed first when not (anchord/health.py). Healthy: that file is younger than 30 s
# (anchord.health.STALE_AFTER) and its writer is alive. In every other case -- no file, a stale
# one, its writer gone -- `anchord healthcheck` decides from health.json and says why.
run_dir="${ANCHORD_RUN_DIR:-/run/anchord}"
if [ -n "$(find "$run_dir/ready" -maxdepth 0 -mmin -0.5 2>/dev/null)" ] \
    && read -r pid <"$run_dir/ready" 2>/dev/null \
    && case "$pid" in '' | *[!0-9]*) false ;; esac \
    && [ -d "/proc/$pid" ]; then
    echo ready
    exit 0
fi
exec anchord healthcheck
