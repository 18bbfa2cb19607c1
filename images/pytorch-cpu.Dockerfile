# carml-worker:pytorch-cpu: the worker program (carml_mesh.exec.worker) with PyTorch (CPU build) on the CPU.
#
# Built by scripts/build-images, offline: the build context holds only this file, wheels/ (a wheelhouse of cp311
# manylinux wheels at the versions the node's .venv runs) and the worker's own .py files at their repository paths.
# Nothing is fetched while building: pip installs from /wheels with --no-index. The torch wheel is the CPU build
# (2.13.0+cpu, no nvidia-* dependencies): build_images.py refuses a wheelhouse with any other.
#
# BASE must be a Debian-like image whose python3 is Python 3.11 with the venv module: python:3.11-slim where a
# registry is reachable, or carml-base:bookworm (debootstrap, made by scripts/build-images) offline.
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheels/ /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --quiet --no-index --find-links /wheels --no-compile \
        torch numpy pillow msgpack \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip uninstall --quiet --yes pip
COPY carml_mesh/__init__.py /app/carml_mesh/
COPY carml_mesh/exec/__init__.py /app/carml_mesh/exec/
COPY carml_mesh/exec/worker/*.py /app/carml_mesh/exec/worker/
# The root fs is read-only at run time, so Python can never write bytecode there: compile everything now.
# unchecked-hash: the .pyc files are used without comparing source mtimes, which COPY does not promise to keep.
# The worker must compile; in site-packages, as in pip's own compile step, files this Python cannot parse are left
# out (torch ships test helpers in Python 3.12 syntax that nothing imports here).
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /app \
 && { /opt/venv/bin/python -m compileall -qq -j 0 --invalidation-mode unchecked-hash /opt/venv/lib || true; }

FROM ${BASE}
RUN groupadd --gid 10001 carml \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin carml
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# HOME=/tmp: the only writable place in the sandbox (a tmpfs), for libraries that want a cache directory.
ENV PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp
USER 10001:10001
# python -m puts the working directory first on sys.path: make it the read-only /app, never the writable /tmp.
WORKDIR /app
ENTRYPOINT ["/opt/venv/bin/python", "-m", "carml_mesh.exec.worker"]
CMD ["--help"]

# Last, so that a new input hash alone reuses every layer above from the build cache.
ARG FRAMEWORK_VERSION=unknown
ARG INPUTS=unknown
LABEL org.opencontainers.image.title="carml-worker pytorch (cpu)" \
      org.opencontainers.image.description="CarML mesh worker: runs models with PyTorch (TorchScript) on the CPU" \
      org.carml.framework="pytorch" \
      org.carml.framework.version="${FRAMEWORK_VERSION}" \
      org.carml.device="cpu" \
      org.carml.inputs="${INPUTS}"
