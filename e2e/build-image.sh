#!/usr/bin/env bash
# Build the anchord image without reaching any registry from inside the build.
#
# Owns: .build/wheels/ (wheels of anchord and all its dependencies, built on the host with the
# host's pip) and the `docker build` of Dockerfile with them. The Dockerfile installs from those
# wheels with `pip --no-index`: HTTPS to PyPI from inside a build container fails here (no CA
# bundle), the host's pip reaches it fine. The base image debian:bookworm-slim must exist
# locally (e2e/prepare-host.sh makes it with debootstrap when it cannot be pulled).
#
# Usage: e2e/build-image.sh [-t TAG] [-C CONTEXT_DIR] [-- extra docker build args]
#   -t TAG   image tag (default: $ANCHORD_IMAGE or anchord:latest)
#   -C DIR   project source / build context (default: the repository this script is in)
# Wheels are reused: a second build only rebuilds the anchord wheel unless the dependencies
# changed (then pip goes to the index for what is missing). The build log goes to
# .build/docker-build.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=${ANCHORD_IMAGE:-anchord:latest}
context=$(cd "$here/.." && pwd)

while (($#)); do
    case $1 in
        -t) tag=$2; shift 2 ;;
        -C) context=$(cd "$2" && pwd); shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { printf 'build-image: %s\n' "$*" >&2; }

[[ -f $context/Dockerfile ]] || { log "no Dockerfile in $context"; exit 1; }
python=${PYTHON:-python3}
build_dir=$context/.build
wheels=$build_dir/wheels
mkdir -p "$wheels"
# Keep .build/ out of git without touching the project's .gitignore.
[[ -f $build_dir/.gitignore ]] || printf '*\n' >"$build_dir/.gitignore"

start=$SECONDS
rm -f "$wheels"/anchord-*.whl
# Build the anchord wheel from a staged copy of the sources, so that setuptools leaves no
# build/ or *.egg-info behind in the work tree.
src=$build_dir/src
rm -rf "$src"
mkdir -p "$src"
for item in pyproject.toml setup.cfg setup.py README.md LICENSE MANIFEST.in anchord bus workers; do
    [[ -e $context/$item ]] || continue
    tar -C "$context" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' -cf - "$item" \
        | tar -C "$src" -xf -
done
pip_wheel=("$python" -m pip wheel --disable-pip-version-check --quiet --wheel-dir "$wheels"
    --find-links "$wheels")
# Offline first (everything already in .build/wheels), then with the index for what is missing.
# The build backend (setuptools, wheel) is kept there too so that the offline try can build.
# (The grep only hides pip's notices about configured find-links folders that do not exist.)
quiet_pip() { "${pip_wheel[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2; }
if ! "${pip_wheel[@]}" --no-index "$src" >/dev/null 2>&1; then
    log "wheels: fetching what .build/wheels lacks"
    quiet_pip setuptools wheel
    quiet_pip "$src"
fi
ls "$wheels"/anchord-*.whl >/dev/null 2>&1 || { log "no anchord wheel was built"; exit 1; }
log "wheels: $(find "$wheels" -name '*.whl' | wc -l) in .build/wheels ($((SECONDS - start))s)"

# Docker 20.10 has no buildx here: the classic builder is enough for this Dockerfile.
log "docker build -t $tag"
if ! DOCKER_BUILDKIT=0 docker build -t "$tag" -f "$context/Dockerfile" "$@" "$context" \
    >"$build_dir/docker-build.log" 2>&1; then
    tail -n 40 "$build_dir/docker-build.log" >&2
    log "docker build failed (full log: $build_dir/docker-build.log)"
    exit 1
fi
size=$(docker image inspect -f '{{.Size}}' "$tag")
log "built $tag: $((size / 1000000)) MB in $((SECONDS - start))s"
