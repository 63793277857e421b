# syntax=docker/dockerfile:1
# The `nexus` binary in a small Debian image. Build and run (serving beyond loopback turns auth
# on, and the server refuses to start without a credential: here an HS256 secret):
#
#   docker build -t nexus .
#   docker run -p 8080:8080 -v nexus-data:/var/lib/nexus -e NEXUS_JWT_SECRET="$(openssl rand -hex 32)" nexus
#
# Split roles on PostgreSQL, NATS and RabbitMQ: pass NEXUS_STORE_URL, NEXUS_STREAM_URL and
# NEXUS_QUEUE_URL, and e.g. `serve --role query --listen 0.0.0.0:8080 --data-dir /var/lib/nexus`
# as the command (README.md, "Deploying").

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io downloads and the target directory between builds; the
# binary is copied out of the mounted target directory, which the next stage cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nexus && \
    cp target/release/nexus /usr/local/bin/nexus

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to PostgreSQL, NATS, RabbitMQ and https:// webhook targets.
RUN apt-get update && \
    apt-get install -y --no-install-recommends ca-certificates && \
    rm -rf /var/lib/apt/lists/* && \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/nexus --shell /usr/sbin/nologin nexus && \
    install -d -o nexus -g nexus -m 0700 /var/lib/nexus
COPY --from=build /usr/local/bin/nexus /usr/local/bin/nexus

USER nexus
WORKDIR /var/lib/nexus
VOLUME /var/lib/nexus
EXPOSE 8080

# Ready = /health/ready answers 200 (every configured backend answers; no credential needed).
# bash's /dev/tcp instead of curl: bash is in the image already, curl would add a package and its
# libraries to patch. It speaks plain HTTP to port 8080, so it assumes the default command's
# --listen port and no --tls-cert; change it with them.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health/ready HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]

# SIGTERM (docker stop) is Nexus's clean stop; it runs as PID 1 and handles it itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["nexus"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/nexus"]
