# carml-worker:onnxruntime-gpu: the worker program (carml_mesh.exec.worker) with onnxruntime-gpu (CUDA provider).
#
# Needs a registry: it is NOT built offline (scripts/build-images --gpu says so and skips it when the base image is
# neither present nor pullable). The build context is as for the CPU images: this file, wheels/ (cp311 manylinux
# wheels: onnxruntime-gpu at the .venv's onnxruntime version, numpy, pillow, msgpack) and the worker's .py files.
#
# BASE must provide the CUDA 12 runtime and cuDNN 9 libraries that onnxruntime-gpu's CUDA provider loads, and either
# Python 3.11 with its venv module or apt-get to install them: the wheels are cp311. The default CUDA image is
# Ubuntu 22.04, whose python3 is 3.10, so the "python" stage below installs python3.11 from Ubuntu's universe (that
# step needs an apt mirror). Run the container with the NVIDIA runtime (--gpus all) and --device cuda.
ARG BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${BASE} AS python
RUN if ! python3.11 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv \
     && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheels/ /wheels/
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --quiet --no-index --find-links /wheels --no-compile \
        onnxruntime-gpu numpy pillow msgpack \
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

FROM python
RUN groupadd --gid 10001 carml \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin carml
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# HOME=/tmp: the only writable place in the sandbox (a tmpfs), for libraries that want a cache directory.
# The CUDA base sets PATH, LD_LIBRARY_PATH and NVIDIA_* variables: keep them, only put the venv first.
ENV PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp
USER 10001:10001
# python -m puts the working directory first on sys.path: make it the read-only /app, never the writable /tmp.
WORKDIR /app
ENTRYPOINT ["/opt/venv/bin/python", "-m", "carml_mesh.exec.worker"]
CMD ["--help"]

# Last, so that a new input hash alone reuses every layer above from the build cache.
ARG FRAMEWORK_VERSION=unknown
ARG INPUTS=unknown
LABEL org.opencontainers.image.title="carml-worker onnxruntime (cuda)" \
      org.opencontainers.image.description="CarML mesh worker: runs models with onnxruntime-gpu on NVIDIA GPUs" \
      org.carml.framework="onnxruntime" \
      org.carml.framework.version="${FRAMEWORK_VERSION}" \
      org.carml.device="cuda" \
      org.carml.inputs="${INPUTS}"
