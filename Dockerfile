# syntax=docker/dockerfile:1
# One image for all five entry points: flexinfer (CLI), flexinfer-agent, flexinfer-extender,
# flexinfer-controller, flexinfer-proxy. The manifests pick one with `command:`.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#                -t ghcr.io/flexinfer/flexinfer:0.1.0 .
#   docker build --build-arg BASE=rocm/dev-ubuntu-24.04:6.4.1 --build-arg ROCM=1 \
#                -t ghcr.io/flexinfer/flexinfer:0.1.0-rocm6.4.1 .
#
# GPU libraries are NOT baked into the default image:
# - NVIDIA: NVML (libnvidia-ml.so.1) comes from the host driver. The NVIDIA container toolkit injects it
#   (and the /dev/nvidia* nodes) when the container has NVIDIA_VISIBLE_DEVICES set and runs with the
#   nvidia runtime (daemonset/components/nvidia). nvidia-ml-py is a pure-Python binding that dlopens it,
#   so the image always matches the node's driver.
# - AMD: amdsmi's Python package loads libamd_smi.so, which must match the node's ROCm/amdgpu release.
#   Build the ROCm variant (BASE = a ROCm image, ROCM=1): it installs the amdsmi wheel shipped in that
#   image's /opt/rocm/share/amd_smi, so library and binding come from the same release. On the default
#   image `import amdsmi` fails; the agent then reports "amdsmi unavailable" and falls back to sysfs.
#
# Reproducible: both stages start from python:3.11-slim pinned by its manifest-list digest (refresh it with
# `docker buildx imagetools inspect python:3.11-slim` and commit the new digest), and every Python dependency is
# installed from requirements/runtime.lock (exact versions + sha256 of every file, `--require-hashes`; regenerate
# with `bash hack/lock.sh`). An image built twice from the same commit gets the same packages.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
ARG BASE=${PYTHON_IMAGE}

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml setup.py README.md LICENSE ./
COPY flexinfer/ flexinfer/
COPY agent/ agent/
COPY extender/ extender/
COPY controller/ controller/
COPY proxy/ proxy/
# A wheel of the project only (pure Python, non-editable). Dependencies are resolved in the final stage
# so compiled wheels (grpcio, msgspec, uvloop) match the final image's Python (3.12 on ROCm bases).
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE}
ARG ROCM=0
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="flexinfer" \
      org.opencontainers.image.description="GPU-aware placement for LLM serving on heterogeneous Kubernetes clusters: node agent, scheduler extender, Model controller, CLI" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/flexinfer/flexinfer" \
      org.opencontainers.image.url="https://github.com/flexinfer/flexinfer" \
      org.opencontainers.image.documentation="https://github.com/flexinfer/flexinfer#readme" \
      org.opencontainers.image.vendor="FlexInfer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEXINFER_LOG_FORMAT=json
# ROCm base images are Ubuntu with a system Python that pip must not modify (PEP 668): use a venv there.
# On the default python:3.11-slim base nothing is installed here and /opt/venv does not exist.
RUN if [ "$ROCM" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
      && rm -rf /var/lib/apt/lists/* \
      && python3 -m venv /opt/venv; \
    fi
ENV PATH=/opt/venv/bin:$PATH
COPY --from=build /wheels /wheels
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --require-hashes --only-binary=:all: -r /tmp/runtime.lock \
    && pip install --no-deps /wheels/flexinfer-*.whl \
    && if [ "$ROCM" = "1" ]; then pip install /opt/rocm/share/amd_smi; fi \
    && rm -rf /wheels /tmp/runtime.lock
# Non-root by default (uid/gid 10001, matching the manifests' runAsUser). The AMD agent adds the
# node's video/render groups through supplementalGroups; nothing here needs root at run time.
RUN groupadd --system --gid 10001 flexinfer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin flexinfer
USER 10001:10001
WORKDIR /tmp
# agent metrics+health, agent gRPC, extender HTTP (+metrics, health), extender gRPC, controller metrics (the
# proxy's API port is 8080 too, in its own pod), proxy metrics+health
EXPOSE 9400 9401 8888 9090 8080 9402
ENTRYPOINT []
CMD ["flexinfer", "--help"]
