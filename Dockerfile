# visits-gateway container image.
#
#   docker build -t visits-gateway:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm -p 8080:8080 visits-gateway:0.1.0 demo
#
# Stages:
#   node     official Node.js image; only its node + npm are copied out (build.rs
#            runs `npm ci` in graphiql/ to fetch the GraphiQL assets it embeds).
#   chef     Rust 1.95 on Debian bookworm + Node.js + npm + cargo-chef.
#   planner  computes the dependency recipe (changes only when Cargo.toml/Cargo.lock do).
#   builder  builds the dependencies from the recipe (cached layer), then the binary.
#   runtime  distroless cc (glibc, libgcc, CA certificates, tzdata; no shell, no
#            package manager), numeric non-root user 65532.

FROM node:22-bookworm-slim AS node

FROM rust:1.95.0-bookworm AS chef
# Node.js and npm for build.rs. npm's launchers are symlinks into its package
# directory, so they are re-created rather than copied.
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && node --version \
    && npm --version \
    && cargo install cargo-chef --locked --version 0.1.77 \
    && rm -rf /usr/local/cargo/registry
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin visits-gateway
COPY . .
# `cargo clean -p` drops the placeholder artifacts cargo-chef compiled for this
# package, so the real sources are always rebuilt whatever their timestamps.
RUN cargo clean --release -p visits-gateway \
    && cargo build --release --locked --bin visits-gateway \
    && strip --strip-debug target/release/visits-gateway \
    && install -D -m 0755 target/release/visits-gateway /out/visits-gateway

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="visits-gateway" \
      org.opencontainers.image.description="GraphQL gateway for the live-streaming platform's user-visits report" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/visits-gateway /usr/local/bin/visits-gateway
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/visits-gateway"]
CMD ["serve"]
