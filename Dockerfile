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
# The accelerator llama.cpp is built for: here the CPU (no GPU toolchain in this image; see
# Dockerfile.cuda for NVIDIA GPUs). P2PAI_ACCEL forces one, as for scripts/install.sh.
ARG P2PAI_ACCEL=
RUN python -m venv "$VIRTUAL_ENV" && P2PAI_ACCEL="$P2PAI_ACCEL" ./scripts/install.sh all
ENV PATH="$VIRTUAL_ENV/bin:$PATH" \
    P2PAI_DATA_DIR=/data \
    P2PAI_LISTEN=0.0.0.0:8080 \
    P2PAI_P2P_LISTEN=/ip4/0.0.0.0/tcp/4001 \
    P2PAI_PEER_LISTEN=0.0.0.0:4002

VOLUME /data
# 8080: OpenAI API; 4001: libp2p (membership, tunnel); 4002: signed node-to-node HTTP.
# Behind Docker's NAT set P2PAI_PEER_ADVERTISE=<host IP>:4002 (or use --network host).
EXPOSE 8080 4001 4002
ENTRYPOINT ["p2pai", "start"]
