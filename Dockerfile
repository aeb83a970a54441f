# Build: a full Rust toolchain, dependencies cached in their own layer.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Stub every declared target (cargo reads them all from the manifest) so this layer builds
# only the dependencies and is reused until Cargo.toml or Cargo.lock change.
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/verify.rs \
    && cargo build --release --locked --bin gemhook
COPY . .
# Touch the sources so cargo rebuilds the crate over the dependency-only stub.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin gemhook

# Run: a slim image, no toolchain, an unprivileged user. Migrations are compiled into the binary.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/gemhook --create-home gemhook
COPY --from=build /src/target/release/gemhook /usr/local/bin/gemhook
RUN mkdir -p /var/lib/gemhook/data && chown gemhook /var/lib/gemhook/data
USER gemhook
WORKDIR /var/lib/gemhook
# PORT (not GEMHOOK_LISTEN) so that platforms which set PORT, like Cloud Run, are obeyed: gemhook
# listens on 0.0.0.0:$PORT when GEMHOOK_LISTEN is unset.
ENV PORT=8080 \
    GEMHOOK_LOG_FORMAT=json
# The embedded SQLite database and results live here (./data) unless GEMHOOK_DATABASE_URL and
# GEMHOOK_RESULTS_URL point elsewhere: without a volume they are lost with the container.
VOLUME ["/var/lib/gemhook/data"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gemhook"]
CMD ["serve"]
