# syntax=docker/dockerfile:1
# The three binaries in one small image; run `ingest`, `worker` or `api` (see docker-compose.yml).
# The build step is the README's: `cargo build --release --locked --bin ingest --bin worker --bin api`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: a change to our sources does not rebuild them.
# Every target the manifests declare gets a placeholder so that cargo can read them (a
# placeholder of a target that is not declared yet does no harm).
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY common/Cargo.toml common/build.rs common/
COPY ingest/Cargo.toml ingest/
COPY worker/Cargo.toml worker/
COPY api/Cargo.toml api/
COPY tests/Cargo.toml tests/
RUN mkdir -p common/src ingest/src worker/src api/src worker/benches tests/harness tests/e2e tests/benches migrations \
 && touch common/src/lib.rs ingest/src/lib.rs worker/src/lib.rs api/src/lib.rs tests/harness/lib.rs \
 && for f in ingest/src/main.rs worker/src/main.rs api/src/main.rs worker/benches/probe.rs tests/e2e/main.rs \
             tests/benches/pipeline.rs tests/benches/soak.rs tests/benches/upload.rs \
             tests/benches/hostile.rs tests/benches/transcribe.rs tests/benches/s3.rs \
             tests/benches/api.rs; do echo 'fn main() {}' > $f; done \
 && cargo build --release --locked --bin ingest --bin worker --bin api \
 && rm -rf common/src ingest/src worker/src api/src
COPY common common
COPY ingest ingest
COPY worker worker
COPY api api
COPY migrations migrations
COPY hooks hooks
# Newer than the placeholders' build, so cargo rebuilds our crates (and only them).
RUN touch common/src/lib.rs ingest/src/lib.rs ingest/src/main.rs worker/src/lib.rs worker/src/main.rs \
          api/src/lib.rs api/src/main.rs \
 && cargo build --release --locked --bin ingest --bin worker --bin api

# The Whisper engine's venv (hooks/requirements.txt) and its models, made in a stage of their own
# so that pip and python3-venv stay out of the image. Same base as the image: the venv's python
# is the image's /usr/bin/python3.
FROM debian:bookworm-slim AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY hooks/requirements.txt /opt/vmpipe/requirements.txt
RUN python3 -m venv /opt/vmpipe/python \
 && /opt/vmpipe/python/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
      -r /opt/vmpipe/requirements.txt \
 && /opt/vmpipe/python/bin/python -m pip uninstall --yes --quiet pip setuptools
# The models the worker can load (VMPIPE_WHISPER_MODEL), fetched now into the Hugging Face cache:
# nothing is fetched at run time. Names as faster-whisper knows them (tiny, tiny.en, base,
# base.en, small, small.en, medium, large-v3, distil-large-v3, turbo, ...) or Hugging Face repos
# of CTranslate2 models (`Systran/faster-whisper-small`), separated by spaces:
#   docker build --build-arg WHISPER_MODELS="base small" .
# Each is loaded once offline, as the worker will, so a name that would fail fails the build.
ARG WHISPER_MODELS=base
ENV HF_HOME=/opt/vmpipe/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1
RUN mkdir -p "$HF_HOME" \
 && for model in $WHISPER_MODELS; do \
      /opt/vmpipe/python/bin/python -c 'import sys; from faster_whisper import download_model; download_model(sys.argv[1])' "$model" \
      && HF_HUB_OFFLINE=1 /opt/vmpipe/python/bin/python -c 'import sys; from faster_whisper import WhisperModel; WhisperModel(sys.argv[1], device="cpu", compute_type="int8", local_files_only=True)' "$model" \
      || exit 1; \
    done \
 && rm -rf "$HF_HOME/xet" "$HF_HOME/hub/.locks" \
 && chmod -R a+rX "$HF_HOME"

FROM debian:bookworm-slim
# python3 for the Whisper engine (its venv comes from the stage above), curl for the health
# checks, tini as the init process: it passes signals on and reaps the hook programs (and the
# engine) the worker starts.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vmpipe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/vmpipe --create-home vmpipe \
 && mkdir -p /var/lib/vmpipe/data /etc/vmpipe && chown vmpipe:vmpipe /var/lib/vmpipe/data
COPY --from=python /opt/vmpipe/python /opt/vmpipe/python
COPY --from=python /opt/vmpipe/huggingface /opt/vmpipe/huggingface
COPY --from=build /src/target/release/ingest /src/target/release/worker /src/target/release/api \
     /usr/local/bin/
# uid and gid 10001: a directory of the host mounted at /var/lib/vmpipe/data must be theirs
# (`install -d -o 10001 -g 10001 /srv/vmpipe`). Settings file and certificates: /etc/vmpipe.
USER 10001:10001
WORKDIR /var/lib/vmpipe
# In a container the health port must be reachable from outside it (the orchestrator's probes);
# outside containers the worker's default is 127.0.0.1.
# The engine: the venv's python (VMPIPE_PYTHON), models from the cache filled above, never from
# the network (HF_HUB_OFFLINE). The venv's bin comes first in PATH, for hook programs in Python.
ENV VMPIPE_STORAGE_DIR=/var/lib/vmpipe/data \
    VMPIPE_WORKER_LISTEN=0.0.0.0:9091 \
    VMPIPE_API_LISTEN=0.0.0.0:8081 \
    VMPIPE_PYTHON=/opt/vmpipe/python/bin/python \
    HF_HOME=/opt/vmpipe/huggingface \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PATH=/opt/vmpipe/python/bin:$PATH
EXPOSE 8080 8081 9091
# `-s`: tini reaps orphans even when it is not PID 1 (`docker run --init`, compose `init: true`).
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
CMD ["ingest"]
