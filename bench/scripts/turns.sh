#!/usr/bin/env bash
# The turn-pipeline benchmarks of docs/benchmarks.md (§10), in one session against workerd:
# W1 one hot counter and W2 1,000 counters (32 connections), one connection (stateless front
# door vs an increment turn vs a read-only turn), for each Stead configuration in CONFIGS:
#
#   v2       protocol 2 (the SDK's cache, writes carried with the answer), group commit, TCP
#   v2-unix  the same with the app on a Unix domain socket
#   v2-volume v2-unix with --sync volume (one syncfs of the data volume per batch of commits)
#   v1       the app forced to protocol 1 (STEAD_APP_PROTOCOL=1: a call per storage operation)
#   v1-solo  protocol 1 and --group-commit-max-turns 1 (every turn commits alone)
#
#   bench/scripts/turns.sh [BIN_DIR] [OUT_DIR]   # BIN_DIR: release stead, counter, stead-bench
set -euo pipefail
bin=${1:-target/release}
out=${2:-/tmp/stead-turns}
rounds=${ROUNDS:-3}
configs=${CONFIGS:-v2 v2-unix v1 v1-solo}
mkdir -p "$out"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench="$bin/stead-bench"
source "$here/bench/scripts/dev-session.sh"

start_dev() { # config
  local cfg=$1 data="$out/data-$1"
  rm -rf "$data"
  # --app-bin: exactly the app built with the sidecar; it means TCP unless v2-unix says otherwise.
  local args=(--example counter --data-dir "$data" --app-bin "$bin/counter")
  local env=()
  case $cfg in
    v2) ;;
    v2-unix) args+=(--app-transport unix) ;;
    v2-volume) args+=(--app-transport unix --sidecar-arg=--sync=volume) ;;
    v1) env+=(STEAD_APP_PROTOCOL=1) ;;
    v1-solo) env+=(STEAD_APP_PROTOCOL=1); args+=(--sidecar-arg=--group-commit-max-turns=1) ;;
  esac
  run_dev "$cfg" "${env[@]}" -- "${args[@]}"
}

"$here/scripts/peer-workerd.sh" start >/dev/null
for round in $(seq 1 "$rounds"); do
  for cfg in $configs; do
    start_dev "$cfg"
    hdr "round $round, Stead $cfg"
    "$bench" http --url "$url/objects/Counter/name/{object}/increment" --objects 1 | tee -a "$out/$cfg.txt"
    "$bench" http --url "$url/objects/Counter/name/{object}/increment" --objects 1000 | tee -a "$out/$cfg.txt"
    "$bench" http --connections 1 --duration 8 --warmup 1 --method GET --url "$url/" | tee -a "$out/$cfg-one.txt"
    "$bench" http --connections 1 --duration 8 --warmup 1 --url "$url/objects/Counter/name/{object}/increment" --objects 1 | tee -a "$out/$cfg-one.txt"
    "$bench" http --connections 1 --duration 8 --warmup 1 --method GET --url "$url/objects/Counter/name/{object}/value" --objects 1 | tee -a "$out/$cfg-one.txt"
    stop_dev
  done
  hdr "round $round, workerd"
  "$bench" http --method GET --url 'http://127.0.0.1:8787/counter/{object}' --objects 1 | tee -a "$out/workerd.txt"
  "$bench" http --method GET --url 'http://127.0.0.1:8787/counter/{object}' --objects 1000 | tee -a "$out/workerd.txt"
done
