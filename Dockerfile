# syntax=docker/dockerfile:1
# Multi-stage build of the mSIM binaries: msim-chat, msim-relay, msim.
#   docker build -t msim .
#   docker run --rm msim msim-relay --help

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p msim-chat -p msim-relay -p msim-cli \
 && mkdir -p /out \
 && cp target/release/msim-chat target/release/msim-relay target/release/msim /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /data --create-home --uid 10001 msim
COPY --from=build /out/ /usr/local/bin/
USER msim
WORKDIR /data
VOLUME ["/data"]
EXPOSE 3214 3215
ENV RUST_LOG=info
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["msim-chat", "--listen", "0.0.0.0:3214", "--data-dir", "/data"]
