FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY p2pai ./p2pai
COPY tokens ./tokens
COPY scripts ./scripts
ENV VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV" && ./scripts/install.sh all
ENV PATH="$VIRTUAL_ENV/bin:$PATH" \
    P2PAI_DATA_DIR=/data \
    P2PAI_LISTEN=0.0.0.0:8080

VOLUME /data
EXPOSE 8080
ENTRYPOINT ["p2pai", "start"]
