# One image for the API and the CPU worker. GPU workers build with --build-arg EXTRAS=gpu:
# torch's default CUDA build and onnxruntime-gpu with its CUDA/cuDNN wheels.
FROM python:3.11-slim-bookworm

ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MODELPRESS_HOST=0.0.0.0 \
    MODELPRESS_PORT=8000 \
    MODELPRESS_DATA_DIR=/data

# bubblewrap confines each job's process (docs/security.md); the worker refuses jobs without it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY api ./api
COPY core ./core
COPY worker ./worker
COPY optimizers ./optimizers
COPY migrations ./migrations
# onnxruntime and onnxruntime-gpu share one module: on GPU images only the GPU build stays.
RUN if [ "$EXTRAS" = "gpu" ]; then \
        pip install ".[gpu]" && pip uninstall -y onnxruntime \
        && pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.20"; \
    else \
        pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt .; \
    fi \
    && useradd --create-home --uid 1000 modelpress && mkdir -p /data && chown modelpress /data
USER modelpress
EXPOSE 8000
CMD ["python", "-m", "api"]
