#!/usr/bin/env bash
# The turn-pipeline rows of docs/benchmarks.md beyond W1/W2 (§11, §14), in one session: alarm
# sets and fires on 10,000 new objects (spread: each due 1 s after its set, for the lag; and all
# due at once, for the firing rate), WebSocket accepts into one room, and W4 (chat fanout to 100
# sockets, one sender, 1 and 16 messages in flight) against workerd's Room.
#
#   bench/scripts/rows.sh [BIN_DIR] [OUT_DIR]   # BIN_DIR: release stead, counter, chat, stead-bench
#
# STORAGE_THREADS (default: the sidecar's default) sets --storage-threads; SYNC (default: the
# sidecar's, file) sets --sync; ROUNDS (default 1).
set -euo pipefail
bin=${1:-target/release}
out=${2:-/tmp/stead-rows}
rounds=${ROUNDS:-1}
mkdir -p "$out"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench="$bin/stead-bench"
source "$here/bench/scripts/dev-session.sh"
ws="ws://127.0.0.1:$port"
metrics="http://127.0.0.1:19788/metrics"

start_dev() { # example, name of the run
  local example=$1 data="$out/data-$2"
  rm -rf "$data"
  local args=(--example "$example" --data-dir "$data" --app-bin "$bin/$example" --app-transport unix)
  if [[ -n "${STORAGE_THREADS:-}" ]]; then args+=("--sidecar-arg=--storage-threads=$STORAGE_THREADS"); fi
  if [[ -n "${SYNC:-}" ]]; then args+=("--sidecar-arg=--sync=$SYNC"); fi
  run_dev "$2" -- "${args[@]}"
}

"$here/scripts/peer-workerd.sh" start >/dev/null
for round in $(seq 1 "$rounds"); do
  start_dev counter alarms-spread
  hdr "round $round, alarms, each due 1 s after its set (storage threads: ${STORAGE_THREADS:-default}, sync: ${SYNC:-default})"
  "$bench" alarms --url "$url/objects/Counter/name/{object}/alarm?in_ms={in_ms}" --metrics "$metrics" \
    --objects 10000 | tee -a "$out/alarms.txt"
  stop_dev
  start_dev counter alarms-once
  hdr "round $round, alarms, all due 30 s after the start"
  "$bench" alarms --url "$url/objects/Counter/name/{object}/alarm?in_ms={in_ms}" --metrics "$metrics" \
    --objects 10000 --all-due-after-ms 30000 | tee -a "$out/alarms.txt"
  stop_dev

  start_dev chat chat
  hdr "round $round, accepts into one room (Stead)"
  "$bench" idle-sockets --url "$ws/objects/ChatRoom/name/{room}/ws?name=u{i}" \
    --sockets 3000 --per-room 32768 --concurrency 64 | tee -a "$out/accepts.txt"
  for inflight in 1 16; do
    hdr "round $round, W4 chat, one sender, $inflight in flight (Stead)"
    "$bench" ws-fanout --url "$ws/objects/ChatRoom/name/{room}/ws?name=u{i}" --sender one \
      --in-flight "$inflight" | tee -a "$out/w4-stead.txt"
  done
  stop_dev
  for inflight in 1 16; do
    hdr "round $round, W4 chat, one sender, $inflight in flight (workerd)"
    "$bench" ws-fanout --url "ws://127.0.0.1:8787/room/{room}?name=u{i}" --sender one \
      --in-flight "$inflight" | tee -a "$out/w4-workerd.txt"
  done
done
