# syntax=docker/dockerfile:1
# Yoom in a container. Build: `docker build -t yoom .`; run: see deploy/docker-compose.yml and
# docs/deploy.md (browsers must reach UDP 7882 for media; host networking is the simple way).

# Build with the official Rust image, pinned to the toolchain the project is tested with.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# Only what the release build reads. benches/packet_path.rs is there because Cargo.toml names
# that bench and cargo refuses a manifest whose targets are missing.
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches/packet_path.rs benches/
COPY src src
COPY web web
# The registry and target/ live in BuildKit cache mounts: after a source change only Yoom itself
# recompiles, not its dependencies. The binary is copied out because the mount is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin yoom \
    && cp target/release/yoom /usr/local/bin/yoom

# Run on slim Debian of the same release (same glibc). The binary needs only libc and libgcc_s:
# no OpenSSL, no CA certificates (Yoom makes no outgoing TLS connections).
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 yoom \
    && useradd --system --no-log-init --uid 10001 --gid yoom \
        --home-dir /var/lib/yoom --create-home --shell /usr/sbin/nologin yoom
COPY --from=build /usr/local/bin/yoom /usr/local/bin/yoom
COPY config/yoom.toml /etc/yoom/yoom.toml
# Environment variables beat the file (see /etc/yoom/yoom.toml for every key). YOOM_PORT is set
# here, not only in the file, so that `yoom healthcheck` probes the port the server listens on:
# change it with `-e YOOM_PORT=...`, which both read.
ENV YOOM_CONFIG=/etc/yoom/yoom.toml \
    YOOM_BIND=0.0.0.0 \
    YOOM_PORT=3000
WORKDIR /var/lib/yoom
# Numeric, so that orchestrators can verify "runAsNonRoot" without reading /etc/passwd.
USER 10001:10001
# 3000: HTTP and WebSocket signaling (put TLS in front of it). 7882: all media, one UDP port.
EXPOSE 3000/tcp 7882/udp
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["yoom", "healthcheck"]
ENTRYPOINT ["yoom"]
CMD ["serve"]
