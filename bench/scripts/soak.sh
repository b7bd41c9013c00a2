#!/usr/bin/env bash
# The soak benchmark of docs/benchmarks.md: two `stead dev` instances (counter and chat, idle
# timeout 2 s so that objects keep hibernating and reopening), `stead-bench soak` against both
# for MINUTES, then both stopped with SIGTERM (stead dev stops its sidecar and app).
#
#   bench/scripts/soak.sh MINUTES [BIN_DIR] [OUT_DIR]     # BIN_DIR: release binaries
set -euo pipefail
minutes=${1:?usage: soak.sh MINUTES [BIN_DIR] [OUT_DIR]}
bin=${2:-target/release}
out=${3:-/tmp/stead-soak}
port=${SOAK_PORT:-28787}
chat_port=$((port + 100))
mkdir -p "$out"
rm -rf "$out/data-counter" "$out/data-chat"
pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT
"$bin/stead" dev --example counter --port "$port" --data-dir "$out/data-counter" \
  --app-bin "$bin/counter" --sidecar-arg=--idle-timeout=2s > "$out/dev-counter.log" 2>&1 &
pids+=($!)
"$bin/stead" dev --example chat --port "$chat_port" --data-dir "$out/data-chat" \
  --app-bin "$bin/chat" --sidecar-arg=--idle-timeout=2s > "$out/dev-chat.log" 2>&1 &
pids+=($!)
for p in "$port" "$chat_port"; do
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$((p + 1001))/healthz" > /dev/null && break
    sleep 0.2
  done
done
"$bin/stead-bench" soak --minutes "$minutes" \
  --counter "http://127.0.0.1:$port" --chat "ws://127.0.0.1:$chat_port" \
  --metrics "http://127.0.0.1:$((port + 1001))/metrics" \
  --watch "counter-sidecar=$port,counter-app=$((port + 1002)),chat-sidecar=$chat_port,chat-app=$((chat_port + 1002))" \
  --series "$out/series.csv" --label "soak $minutes min" | tee "$out/soak.txt"
