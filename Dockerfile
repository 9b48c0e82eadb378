# visits-gateway container image.
#
#   docker build -t visits-gateway:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm -p 8080:8080 visits-gateway:0.1.0 demo
#
# Stages:
#   graphiql official Node.js image: `npm ci` from graphiql/'s lockfile fetches
#            the GraphiQL and React builds that build.rs embeds (changes only
#            when graphiql/package*.json do).
#   chef     Rust 1.95 on Debian bookworm + cargo-chef.
#   planner  computes the dependency recipe (changes only when Cargo.toml/Cargo.lock do).
#   builder  builds the dependencies from the recipe (cached layer), then the binary,
#            with VISITS_GATEWAY_GRAPHIQL_NODE_MODULES naming the graphiql stage's
#            node_modules, so it needs no Node.js.
#   runtime  distroless cc (glibc, libgcc, CA certificates, tzdata; no shell, no
#            package manager), numeric non-root user 65532.

FROM node:22-bookworm-slim AS graphiql
ENV npm_config_update_notifier=false
WORKDIR /graphiql
COPY graphiql/package.json graphiql/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM rust:1.95.0-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77 \
    && rm -rf /usr/local/cargo/registry
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin visits-gateway
COPY --from=graphiql /graphiql/node_modules /graphiql/node_modules
ENV VISITS_GATEWAY_GRAPHIQL_NODE_MODULES=/graphiql/node_modules
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
