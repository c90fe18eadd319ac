# One image for every service: router, encoder, prefill, decode (the command picks the service).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# torch first and pinned, so that nothing later pulls another build (see the design note). The CPU
# wheel by default; for the compose `gpu` profile build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY router ./router
COPY services ./services
COPY shared ./shared
COPY tools ./tools
RUN pip install .
EXPOSE 8000
CMD ["epd", "up", "--model", "/models/demo", "--http-host", "0.0.0.0"]
