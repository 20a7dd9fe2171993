# The hpo image: CPU torch 2.13.0 and hpo, installed from a wheelhouse made on the host
# (scripts/wheelhouse.sh), so the build needs no index: it works where only a Debian mirror is
# reachable, and pins exactly what the host tested.
#   BASE_IMAGE: any Debian-like image with or without Python 3.11 (default: python:3.11-slim;
#   scripts/compose_check.sh builds one with debootstrap where no registry is reachable)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv libgomp1 \
      && rm -rf /var/lib/apt/lists/*; fi
COPY build/wheels /wheels
RUN python3 -m venv /opt/hpo \
    && /opt/hpo/bin/pip install -q --no-index --find-links /wheels hpo \
    && rm -rf /wheels
ENV PATH=/opt/hpo/bin:$PATH HPO_DATA_DIR=/data/cache HPO_ARTIFACTS=/data/artifacts
WORKDIR /work
COPY studies ./studies
RUN useradd --create-home hpo 2>/dev/null || adduser --disabled-password hpo; mkdir -p /data && chown hpo /data /work
USER hpo
CMD ["hpo", "--help"]
