# One image for every service: router, encoder, prefill, decode (the command picks the service, as
# in docker-compose.yml); without a command it runs the whole cluster in one container (`epd up`).
#
# Two stages. The first builds the project's wheel (`pip wheel --no-deps .`) and installs that wheel
# with its declared dependencies and the mooncake and tracing extras (`--kv-transfer mooncake`,
# `--otlp-traces-endpoint`) into the venv
# /opt/venv; the second is the base image plus the Debian libraries that Mooncake's Transfer Engine
# links (libibverbs1 librdmacm1 libnuma1 libcurl4, as `make deps`), a C and C++ compiler with the
# Python headers (the engine builds its CPU kernels at start) and that venv: no source tree, no tests.
#
#   docker build -t epd:latest .                     CPU torch from the PyTorch index, the rest from PyPI
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128   CUDA torch (compose `gpu` profile)
#   --build-arg WHEELHOUSE=build/wheelhouse          offline: every wheel from that folder of the context
#   --build-arg BASE_IMAGE=localhost/epd-base:bookworm   another Python 3.11 base (docker/build-base.sh)
#
# docker/compose-check.sh builds it offline on a base made from Debian packages and runs the compose
# file against it.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WHEELHOUSE=
LABEL org.opencontainers.image.title=epd-serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
# torch first and pinned (as in the Makefile), so that nothing later pulls another build. A venv
# rather than the system Python: Debian's python3 refuses pip installs outside one (PEP 668).
RUN set -eu; \
    if [ -n "$WHEELHOUSE" ]; then \
        from="--no-index --find-links /src/$WHEELHOUSE"; torch_from="$from"; \
    else \
        from=""; torch_from="--index-url $TORCH_INDEX"; \
    fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install $torch_from torch==2.13.0; \
    /opt/venv/bin/pip wheel --no-deps $from --wheel-dir /wheels /src; \
    wheel=$(echo /wheels/*.whl); \
    /opt/venv/bin/pip install $from "$wheel[mooncake,tracing]"; \
    /opt/venv/bin/pip check

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=epd-serve
# The Transfer Engine's libraries, and the compilers the engine's fast CPU paths build with: gcc for
# the C decode kernels (shared/engine/cpu_kernels.py), g++ and the Python headers for Inductor's
# kernels of the compiled decode step (without them the workers log why and decode eager, with the
# library kernels). apt-get only for what the base lacks (python:3.11-slim lacks all but the headers;
# on trixie apt picks librdmacm1t64 and libcurl4t64 for the old names). docker/build-base.sh's
# offline base has everything already (mmdebstrap --include): an offline build needs no mirror here.
RUN set -eu; \
    for so in libibverbs.so.1 librdmacm.so.1 libnuma.so.1 libcurl.so.4; do \
        ldconfig -p | grep -q "^[[:space:]]*$so " || missing="${missing:-} $so"; \
    done; \
    for tool in cc g++; do command -v $tool >/dev/null || missing="${missing:-} $tool"; done; \
    python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
        || headers=python3-dev; \
    if [ -n "${missing:-}${headers:-}" ]; then \
        echo "apt-get install for:${missing:-} ${headers:-}"; \
        apt-get update -q; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            libibverbs1 librdmacm1 libnuma1 libcurl4 gcc g++ libc6-dev ${headers:-}; \
        rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Fixed ids: Kubernetes makes mounted Secrets (the CurveZMQ keys) readable through fsGroup 10001,
# and a compose host chgrps its key directory to 10001 (README, "Securing the mesh"). ~/.cache
# exists and is the user's, so that a volume mounted there (compose's compile cache) is too.
RUN groupadd --system --gid 10001 epd \
    && useradd --system --uid 10001 --gid epd --create-home --home-dir /home/epd --shell /usr/sbin/nologin epd \
    && install -d -o epd -g epd /home/epd/.cache
USER epd
WORKDIR /home/epd
EXPOSE 8000
CMD ["epd", "up", "--http-host", "0.0.0.0"]
