# CPU-only image: torch comes from PyTorch's CPU index, so no CUDA wheels are pulled.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY studies ./studies
RUN pip install --no-cache-dir .
ENV HPO_DATA_DIR=/data/cache HPO_ARTIFACTS=/data/artifacts
RUN useradd --create-home hpo && mkdir -p /data && chown hpo /data
USER hpo
CMD ["hpo", "--help"]
