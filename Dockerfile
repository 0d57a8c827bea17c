# syntax=docker/dockerfile:1
#
# Tandem's server binaries in one image; compose.yaml picks one per container with
# `command:` (orchestrator, inventory, payment, shipping, acceptor or orders).
#
#   docker build -t tandem:latest .
#
# Not built where Tandem is developed (no Docker engine there): written against the workspace
# layout and checked by reading — see README, "Deploying".

# ---- build ---------------------------------------------------------------------------------
# The toolchain rust-toolchain.toml pins (1.95.0), on Debian bookworm: the runtime stage below
# uses the same Debian release, so the binaries find the glibc they were linked against.
FROM rust:1.95.0-bookworm AS build

# rust-toolchain.toml also asks for clippy and rustfmt, which the image leaves out and a release
# build does not need; naming the same toolchain here keeps rustup from downloading them.
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never

WORKDIR /src
# The whole workspace (see .dockerignore): Cargo.toml lists every member, and the binaries embed
# their migrations (`sqlx::migrate!` reads migrations/ at compile time) and the checkout
# definition (definitions/checkout.json) — nothing is read from disk at run time.
COPY . .

# Cache mounts keep the crates.io downloads and the dependency build between image builds;
# the binaries are copied out because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin orchestrator --bin inventory --bin payment --bin shipping --bin acceptor --bin orders \
    && mkdir -p /out \
    && cp target/release/orchestrator target/release/inventory \
          target/release/payment target/release/shipping target/release/acceptor \
          target/release/orders /out/

# ---- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS run

# ca-certificates: TLS to Postgres (sslmode=verify-full) and to services over https;
# curl: the HTTP health checks in compose.yaml (GET /healthz).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid, so volume and secret file permissions can name it.
RUN groupadd --gid 10001 tandem \
    && useradd --uid 10001 --gid tandem --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tandem

COPY --from=build /out/ /usr/local/bin/

USER 10001:10001
# Each binary reads its settings from the environment (DATABASE_URL, LISTEN_ADDR, … — `--help`
# lists them) and stops gracefully on SIGTERM.
STOPSIGNAL SIGTERM
EXPOSE 8080 8081 8082 8083 8084 8085 8086 8087
CMD ["orchestrator", "--help"]
