# medseg on CPU, installed exactly as the README does it (make builds .venv; make train runs the liver task).
FROM python:3.11-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medseg
COPY . .
RUN make venv

ENV PATH="/opt/medseg/.venv/bin:${PATH}"
CMD ["make", "train"]
