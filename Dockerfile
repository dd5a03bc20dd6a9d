# syntax=docker/dockerfile:1
# Sidelight's image: `sidelight serve` (default) or `sidelight worker`.
#
#   docker build -t sidelight:0.1.0 .                          # CPU (torch's CPU wheel)
#   docker build -t sidelight:0.1.0-demo --target demo .       # + the demo models in /models
#   docker build -t sidelight:0.1.0-cuda \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .   # CUDA: see README
#
# Configuration: SIDELIGHT_<KEY> variables and a mounted YAML file (SIDELIGHT_CONFIG); models
# from a mounted repository (/models); the audit log's keys and SQLite store in the volume
# /var/lib/sidelight/audit. Runs as UID/GID 10001, with a read-only root filesystem (writes
# go to the audit volume and /tmp only).

# Any image with Python 3.11 (python3, with venv) at the same path in every stage.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: the wheel, and a venv holding it with the pinned dependencies -------------------
FROM ${BASE_IMAGE} AS build
# Where torch comes from: its CPU wheels by default (PyPI's Linux torch bundles CUDA, 2.5 GB);
# https://download.pytorch.org/whl/cu126 for CUDA; empty for the index pip is configured with.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A folder of wheels mounted into the build (pip's --find-links), for machines without a route to
# TORCH_INDEX: `podman build -v /opt/wheels:/opt/wheels:ro --build-arg PIP_FIND_LINKS=/opt/wheels`.
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/sidelight
WORKDIR /src
# Dependencies first, from pyproject.toml's list and constraints.txt's pins, in a layer of their
# own: a change to the code does not download them again.
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/sidelight/bin/pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
        -c constraints.txt -r requirements.txt
COPY README.md ./
COPY service service
COPY handlers handlers
COPY protos protos
RUN /opt/sidelight/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/sidelight/bin/pip install --no-deps /wheels/sidelight-*.whl

# ---- runtime: the venv, tini as PID 1, an unprivileged user ----------------------------------
FROM ${BASE_IMAGE} AS runtime
# tini forwards SIGTERM to the server (which drains, then exits 0) and reaps the worker's
# children. Debian's package, so any Debian/Ubuntu base works.
# hadolint ignore=DL3008 # unpinned: BASE_IMAGE may be Debian or Ubuntu, whose versions differ
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 sidelight \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin sidelight \
    && mkdir -p /models /var/lib/sidelight/audit /etc/sidelight \
    && chown 10001:10001 /var/lib/sidelight/audit
COPY --from=build /opt/sidelight /opt/sidelight
ENV PATH=/opt/sidelight/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    SIDELIGHT_HOST=0.0.0.0 \
    SIDELIGHT_MODEL_REPOSITORY=/models \
    SIDELIGHT_AUDIT_DIR=/var/lib/sidelight/audit
VOLUME ["/var/lib/sidelight/audit"]
WORKDIR /tmp
USER 10001:10001
# gRPC (Explainer, Open Inference Protocol, health); /metrics of serve (9095) and worker (9096).
EXPOSE 50051 9095 9096
# No HEALTHCHECK: the image has no gRPC health client, and Kubernetes probes speak gRPC
# health natively (grpc: {port: 50051}); `docker run` users may probe it the same way.
ENTRYPOINT ["/usr/bin/tini", "--", "sidelight"]
CMD ["serve"]

# ---- demo: the runtime with the demo model repository in /models, for trying it out ---------
FROM runtime AS demo
USER 0:0
# The sample inputs of the README lie beside, not in the repository (a folder there is a model).
RUN sidelight models build-demo --out /models --samples /usr/share/sidelight/samples \
        --only digits --only breast_cancer \
    && chmod -R a+rX /models /usr/share/sidelight
USER 10001:10001

# The default target: the runtime image without models.
FROM runtime
