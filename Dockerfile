# syntax=docker/dockerfile:1
# Both binaries in one small image; run `ingest` or `worker` (see docker-compose.yml).
# The build steps are the README's: `cargo build --release --locked --bin ingest --bin worker`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY common/Cargo.toml common/
COPY ingest/Cargo.toml ingest/
COPY worker/Cargo.toml worker/
COPY tests/Cargo.toml tests/
RUN for crate in common ingest worker; do mkdir -p $crate/src && echo 'fn main() {}' > $crate/src/main.rs && touch $crate/src/lib.rs; done \
 && mkdir -p tests/e2e migrations && touch tests/lib.rs && echo 'fn main() {}' > tests/e2e/main.rs \
 && cargo build --release --locked --bin ingest --bin worker \
 && rm -rf common/src ingest/src worker/src
COPY . .
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch common/src/lib.rs ingest/src/lib.rs ingest/src/main.rs worker/src/lib.rs worker/src/main.rs \
 && cargo build --release --locked --bin ingest --bin worker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/vmpipe --create-home vmpipe \
 && mkdir -p /var/lib/vmpipe/data && chown vmpipe /var/lib/vmpipe/data
COPY --from=build /src/target/release/ingest /src/target/release/worker /usr/local/bin/
USER vmpipe
WORKDIR /var/lib/vmpipe
ENV VMPIPE_STORAGE_DIR=/var/lib/vmpipe/data
EXPOSE 8080
CMD ["ingest"]
