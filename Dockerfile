# syntax=docker/dockerfile:1
# paynotify container image: `docker build -t paynotify:0.1.0 .`
# Runs `paynotify serve` as uid 10001; configure it with PAYNOTIFY_* environment variables.

FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the release binary is built from (lua/ and web/ are compiled in; benches/ are
# targets named in Cargo.toml).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
COPY web ./web
COPY benches ./benches
# The test harness crate: a workspace member and dev-dependency, so cargo needs its manifest.
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin paynotify \
 && install -D -m 0755 target/release/paynotify /out/paynotify

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 paynotify \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin paynotify
COPY --from=build /out/paynotify /usr/local/bin/paynotify
USER 10001:10001
# HTTP (API, websockets, /healthz, /readyz, /metrics) and the device listener (set
# PAYNOTIFY_DEVICE_LISTEN=0.0.0.0:7070 on gateway nodes).
EXPOSE 8080 7070
ENV PAYNOTIFY_LISTEN=0.0.0.0:8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["paynotify"]
CMD ["serve"]
