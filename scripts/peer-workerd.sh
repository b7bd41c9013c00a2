#!/usr/bin/env bash
# Run the workerd peer (Cloudflare's open-source Workers runtime) on 127.0.0.1:8787 for
# side-by-side benchmarks against Stead. workerd is installed from npm at run time into a cache
# directory outside the repository; no workerd code or binary is ever kept in this repo.
#
#   scripts/peer-workerd.sh install  install workerd from npm into the cache directory (if needed)
#   scripts/peer-workerd.sh start    install (if needed), fresh data dir, start, wait until up
#   scripts/peer-workerd.sh stop     stop the instance started by `start` (pid file)
#   scripts/peer-workerd.sh status   print whether it runs
#
# Environment: STEAD_PEER_DIR (default ~/.cache/stead-peer-workerd), STEAD_PEER_FILES (default
# ../shared/peers/workerd next to the repo, else /work/shared/peers/workerd).
set -euo pipefail

WORKERD_VERSION=1.20261117.1
ADDR=127.0.0.1:8787
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${STEAD_PEER_DIR:-$HOME/.cache/stead-peer-workerd}"
files="${STEAD_PEER_FILES:-}"
if [[ -z "$files" ]]; then
  for cand in "$here/../../shared/peers/workerd" "/work/shared/peers/workerd"; do
    if [[ -f "$cand/config.capnp" ]]; then files="$cand"; break; fi
  done
fi
pidfile="$dir/workerd.pid"
log="$dir/workerd.log"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install() {
  mkdir -p "$dir"
  if [[ "$(cat "$dir/.installed" 2>/dev/null)" != "$WORKERD_VERSION" ]]; then
    echo "installing workerd@$WORKERD_VERSION into $dir" >&2
    [[ -f "$dir/package.json" ]] || echo '{"private":true}' >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "workerd@$WORKERD_VERSION")
    echo "$WORKERD_VERSION" >"$dir/.installed"
  fi
  [[ -n "$files" ]] || { echo "peer files not found; set STEAD_PEER_FILES" >&2; exit 1; }
  cp "$files/config.capnp" "$files/worker.js" "$dir/"
  [[ -f "$files/spread.lua" ]] && cp "$files/spread.lua" "$dir/"
}

start() {
  if running; then echo "workerd already running (pid $(cat "$pidfile"))" >&2; exit 0; fi
  if curl -s -o /dev/null --max-time 1 "http://$ADDR/"; then
    echo "something already listens on $ADDR" >&2; exit 1
  fi
  install
  rm -rf "$dir/do-data" && mkdir -p "$dir/do-data"
  cd "$dir"
  # Run the binary directly (not via npx) so the pid file names workerd itself.
  bin="$dir/node_modules/.bin/workerd"
  setsid "$bin" serve config.capnp --directory-path "do-storage=$dir/do-data" >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null --max-time 1 "http://$ADDR/"; then
      echo "workerd up on $ADDR (pid $(cat "$pidfile"), data $dir/do-data, log $log)"
      return 0
    fi
    if ! running; then echo "workerd exited; log:" >&2; cat "$log" >&2; exit 1; fi
    sleep 0.2
  done
  echo "workerd did not answer on $ADDR within 20 s; log:" >&2; cat "$log" >&2
  stop; exit 1
}

stop() {
  if ! running; then echo "workerd not running" >&2; rm -f "$pidfile"; return 0; fi
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "workerd stopped (pid $pid)"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
