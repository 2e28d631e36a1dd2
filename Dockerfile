# injector: CPU image. Installs exactly as the Makefile does (torch CPU wheel first, then the pinned stack).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false \
    INJECTOR_HOME=/data/injector

RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 injector && mkdir -p /data/injector && chown -R injector /data

WORKDIR /app
COPY --chown=injector . /app
USER injector

# The same two steps as `make setup`, into the image's .venv.
RUN make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"

ENV PATH=/app/.venv/bin:$PATH
VOLUME ["/data/injector"]
ENTRYPOINT ["injector"]
CMD ["--help"]
