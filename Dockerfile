# syntax=docker/dockerfile:1
# Both binaries in one small image; run `ingest` or `worker` (see docker-compose.yml).
# The build step is the README's: `cargo build --release --locked --bin ingest --bin worker`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: a change to our sources does not rebuild them.
# Every target the manifests declare gets a placeholder so that cargo can read them.
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY common/Cargo.toml common/
COPY ingest/Cargo.toml ingest/
COPY worker/Cargo.toml worker/build.rs worker/
COPY tests/Cargo.toml tests/
RUN mkdir -p common/src ingest/src worker/src worker/benches tests/harness tests/e2e tests/benches migrations \
 && touch common/src/lib.rs ingest/src/lib.rs worker/src/lib.rs tests/harness/lib.rs \
 && for f in ingest/src/main.rs worker/src/main.rs worker/benches/probe.rs tests/e2e/main.rs \
             tests/benches/pipeline.rs tests/benches/soak.rs tests/benches/upload.rs; do echo 'fn main() {}' > $f; done \
 && cargo build --release --locked --bin ingest --bin worker \
 && rm -rf common/src ingest/src worker/src
COPY common common
COPY ingest ingest
COPY worker worker
COPY migrations migrations
COPY hooks hooks
# Newer than the placeholders' build, so cargo rebuilds our crates (and only them).
RUN touch common/src/lib.rs ingest/src/lib.rs ingest/src/main.rs worker/src/lib.rs worker/src/main.rs \
 && cargo build --release --locked --bin ingest --bin worker

FROM debian:bookworm-slim
# python3 and PocketSphinx (with its English model, from PyPI) for VMPIPE_TRANSCRIBER=pocketsphinx;
# the virtualenv's python3 comes first in PATH, which is the one the worker runs.
# tini is the init process: it passes signals on and reaps the hook programs the worker starts.
COPY hooks/requirements.txt /opt/vmpipe/requirements.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl python3 python3-venv tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/vmpipe/python \
 && /opt/vmpipe/python/bin/pip install --no-cache-dir -r /opt/vmpipe/requirements.txt \
 && groupadd --system --gid 10001 vmpipe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/vmpipe --create-home vmpipe \
 && mkdir -p /var/lib/vmpipe/data /etc/vmpipe && chown vmpipe:vmpipe /var/lib/vmpipe/data
COPY --from=build /src/target/release/ingest /src/target/release/worker /usr/local/bin/
# uid and gid 10001: a directory of the host mounted at /var/lib/vmpipe/data must be theirs
# (`install -d -o 10001 -g 10001 /srv/vmpipe`). Settings file and certificates: /etc/vmpipe.
USER 10001:10001
WORKDIR /var/lib/vmpipe
# In a container the health port must be reachable from outside it (the orchestrator's probes);
# outside containers the worker's default is 127.0.0.1.
ENV VMPIPE_STORAGE_DIR=/var/lib/vmpipe/data \
    VMPIPE_WORKER_LISTEN=0.0.0.0:9091 \
    PATH=/opt/vmpipe/python/bin:$PATH
EXPOSE 8080 9091
# `-s`: tini reaps orphans even when it is not PID 1 (`docker run --init`, compose `init: true`).
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
CMD ["ingest"]
