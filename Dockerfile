# One image per role, from one file (docs/deploy.md):
#   docker build --target api .          the API and the migrations: no torch, no onnxruntime
#   docker build --target worker-cpu .   a CPU worker: torch's CPU build, onnxruntime
#   docker build --target worker-gpu .   a GPU worker: torch's CUDA build, onnxruntime-gpu
# Each installs one profile of pyproject.toml, pinned by constraints.txt.
FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELPRESS_HOST=0.0.0.0 \
    MODELPRESS_PORT=8000 \
    MODELPRESS_DATA_DIR=/data
RUN useradd --create-home --uid 1000 modelpress && mkdir -p /data && chown modelpress /data
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY api ./api
COPY core ./core
COPY worker ./worker
COPY optimizers ./optimizers
COPY migrations ./migrations
COPY web ./web

FROM base AS api
RUN pip install -c constraints.txt .
USER modelpress
EXPOSE 8000
CMD ["python", "-m", "api"]

# What both workers need beyond Python packages.
FROM base AS worker-base
# bubblewrap confines each job's process (docs/security.md); the worker refuses jobs without it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

FROM worker-base AS worker-cpu
# torch from PyPI is its CUDA build (gigabytes of CUDA libraries); the CPU build comes from
# PyTorch's own index, and 2.13.0+cpu satisfies constraints.txt's torch==2.13.0.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt \
    '.[worker]'
USER modelpress
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "cpu", "--loglevel", "INFO"]

FROM worker-base AS worker-gpu
# torch from PyPI is its CUDA build; onnxruntime-gpu brings its CUDA and cuDNN wheels.
RUN pip install -c constraints.txt '.[gpu]'
USER modelpress
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "gpu", "--loglevel", "INFO"]
