#!/usr/bin/env bash
# The resharding benchmark of docs/benchmarks.md (§9): `stead-bench reshard` 3 -> 5 under
# 500 increments/s, once with 16 KiB objects and once with 160 KiB objects (same 10,000
# objects, 10x the bytes per slot). Each run starts its own 5-shard cluster (5 `stead sidecar`
# + 5 `counter`, loopback) from the binaries in BIN_DIR and removes it at the end.
#
#   bench/scripts/reshard.sh [BIN_DIR] [OUT_DIR]     # BIN_DIR: release stead, counter, stead-bench
set -euo pipefail
bin=${1:-target/release}
out=${2:-/tmp/stead-reshard}
objects=${RESHARD_OBJECTS:-10000}
mkdir -p "$out"
# The sidecars log every hand-off's pause at info (read back by stead-bench); no colours.
export STEAD_E2E_LOG=info NO_COLOR=1 STEAD_E2E_BIN_DIR="$bin"
for kib in ${RESHARD_KIB:-16 160}; do
  echo "== $objects objects x $kib KiB ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$bin/stead-bench" reshard --objects "$objects" --object-kib "$kib" --rate 500 \
    --from 3 --to 5 --warmup 15 --requests-csv "$out/requests-$kib.csv" 2>&1 | tee "$out/reshard-$kib.txt"
done
