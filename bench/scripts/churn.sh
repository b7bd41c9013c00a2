#!/usr/bin/env bash
# More objects in use than a shard keeps open (docs/benchmarks.md §16): increments spread over
# OBJECTS counters (default 20,000) on a shard with --max-open-objects MAX_OPEN (default 512), so
# nearly every turn opens a database and evicts another. Per run, on a fresh data folder:
#   fill    32 connections, 15 s: creates most of the objects (throughput with creations)
#   one     1 connection, 10 s after 1 s: the latency of a turn that opens a database
#   busy    32 connections, 10 s after 1 s: throughput on objects that mostly exist
# Each BIN_DIR (release stead, counter, stead-bench) in turn, ROUNDS times (default 2).
#
#   bench/scripts/churn.sh OUT_DIR BIN_DIR [BIN_DIR ...]
set -euo pipefail
out=$1
shift
rounds=${ROUNDS:-2}
objects=${OBJECTS:-20000}
max_open=${MAX_OPEN:-512}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out"
bin=$1
source "$here/bench/scripts/dev-session.sh"

for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    name=$(basename "$bin")
    data="$out/data-$name"
    rm -rf "$data"
    run_dev "$name" -- --example counter --data-dir "$data" --app-bin "$bin/counter" \
      --app-transport unix "--sidecar-arg=--max-open-objects=$max_open"
    inc="$url/objects/Counter/name/{object}/increment"
    hdr "round $round, $bin, fill" | tee -a "$out/$name.txt"
    "$bin/stead-bench" http --url "$inc" --objects "$objects" --duration 15 --warmup 0 | tee -a "$out/$name.txt"
    hdr "round $round, $bin, one" | tee -a "$out/$name.txt"
    "$bin/stead-bench" http --url "$inc" --objects "$objects" --connections 1 --duration 10 --warmup 1 | tee -a "$out/$name.txt"
    hdr "round $round, $bin, busy" | tee -a "$out/$name.txt"
    "$bin/stead-bench" http --url "$inc" --objects "$objects" --duration 10 --warmup 1 | tee -a "$out/$name.txt"
    curl -s "http://127.0.0.1:$((port + 1001))/metrics" | grep -E '^stead_objects_(evicted_total|opened_total|open) ' | tee -a "$out/$name.txt" || true
    stop_dev
    rm -rf "$data"
  done
done
