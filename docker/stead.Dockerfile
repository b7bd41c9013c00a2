# syntax=docker/dockerfile:1.7
# The `stead` binary: `stead sidecar` in every shard pod (the operator injects this image),
# `stead dev` locally. Build from the repository root:
#
#   docker build -f docker/stead.Dockerfile -t stead:dev .
#   docker build -f docker/stead.Dockerfile --target counter -t stead-counter:dev .   # example apps:
#   docker build -f docker/stead.Dockerfile --target chat -t stead-chat:dev .         # counter, chat,
#   docker build -f docker/stead.Dockerfile --target life -t stead-life:dev .         # life
#
# Runtime: distroless cc (glibc + libgcc, no shell), user 65532 (nonroot). SQLite is bundled.
#
# Binaries built on the host instead of in the Rust image (no registry needed for the build
# stage): put stead, counter, chat and life into dist/ and pass --build-arg BINARIES=prebuilt;
# --build-arg RUNTIME=<image> names another base. docs/kubernetes.md, "Images without Docker",
# builds them with buildah this way.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm
# Where the binaries come from: `builder` (compiled below) or `prebuilt` (dist/ in the context).
ARG BINARIES=builder
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-${DEBIAN} AS builder
# cmake and clang for crates with C parts (aws-lc-rs, when TLS is on); SQLite builds with cc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep crates and incremental artifacts between builds; the binaries are copied out
# of the cached target dir because cache mounts do not persist into the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stead --bin counter --bin chat --bin life \
 && mkdir -p /out \
 && cp target/release/stead target/release/counter target/release/chat target/release/life /out/

FROM scratch AS prebuilt
COPY dist/ /out/

FROM ${BINARIES} AS binaries

# The counter example app (examples/counter), for examples/counter/k8s and the kind e2e tier.
FROM ${RUNTIME} AS counter
COPY --from=binaries /out/counter /usr/local/bin/counter
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/counter"]

# The chat room example (examples/chat).
FROM ${RUNTIME} AS chat
COPY --from=binaries /out/chat /usr/local/bin/chat
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/chat"]

# The multiplayer Game of Life example (examples/life).
FROM ${RUNTIME} AS life
COPY --from=binaries /out/life /usr/local/bin/life
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/life"]

FROM ${RUNTIME} AS stead
COPY --from=binaries /out/stead /usr/local/bin/stead
USER 65532:65532
# The sidecar's default ports: ingress, peer, admin (/healthz, /readyz, /metrics).
EXPOSE 8787 7878 9788
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/stead"]
CMD ["sidecar"]
