# One image for every component of the mesh:
#   ambient controlplane | ambient ztunnel | ambient node-agent | ambient-cni | python -m ambient.kube.cninode
# Build:  docker build -t ghcr.io/ambient-mesh/ambient:0.1.0 .      (see docs/kubernetes.md)
# The manifests in deploy/kubernetes reference exactly this name and tag.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a wheel of the project (no compiler needed: every dependency ships wheels) ----
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ambient" \
      org.opencontainers.image.description="A sidecar-less (ambient) service mesh in Python" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# The node agent applies redirection rules inside pod network namespaces (iptables-restore or nft) and
# manages the probe ipset on the node; the node proxy needs nothing beyond Python.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ipset iproute2 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# Installed into the system interpreter so the console scripts land in /usr/local/bin (the host CNI shim
# runs /usr/local/bin/ambient-cni inside this image's root).
RUN pip install "$(ls /wheels/ambient-*.whl)[kube]" && rm -rf /wheels \
 && python -c "import ambient.kube.source, ambient.cni.plugin" \
 && test -x /usr/local/bin/ambient-cni
# Non-root by default (the control plane runs so); the DaemonSets run as root with the capabilities
# their manifests grant.
RUN groupadd --gid 10001 ambient && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ambient
USER 10001:10001
ENTRYPOINT ["ambient"]
CMD ["--help"]
