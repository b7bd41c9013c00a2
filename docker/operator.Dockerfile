# syntax=docker/dockerfile:1.7
# The Stead operator (crate `stead-operator`). Build from the repository root:
#
#   docker build -f docker/operator.Dockerfile -t stead-operator:dev .
#
# Runtime: distroless cc (glibc + libgcc, no shell), user 65532 (nonroot); the chart runs it with
# a read-only root filesystem and every capability dropped.
#
# A binary built on the host instead: put stead-operator into dist/ and pass
# --build-arg BINARIES=prebuilt (docs/kubernetes.md, "Images without Docker").

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm
# Where the binary comes from: `builder` (compiled below) or `prebuilt` (dist/ in the context).
ARG BINARIES=builder
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-${DEBIAN} AS builder
# cmake and clang for the TLS stack's C parts (aws-lc-rs / ring).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG OPERATOR_BIN=stead-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stead-operator --bin "${OPERATOR_BIN}" \
 && mkdir -p /out \
 && cp "target/release/${OPERATOR_BIN}" /out/stead-operator

FROM scratch AS prebuilt
COPY dist/stead-operator /out/stead-operator

FROM ${BINARIES} AS binaries

FROM ${RUNTIME}
COPY --from=binaries /out/stead-operator /usr/local/bin/stead-operator
USER 65532:65532
# Metrics, /healthz and /readyz (the chart's metrics.port).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/stead-operator"]
