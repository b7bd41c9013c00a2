# Sourced by the benchmark scripts that run `stead dev` and workerd in one session: the port,
# starting and stopping `stead dev`, the workerd peer stopped on exit, and a header per run.
# Expects `bin` (the release binaries), `out` (the output folder) and `here` (the repository).
port=18787
url="http://127.0.0.1:$port"
dev_pid=

stop_dev() {
  if [[ -n "$dev_pid" ]]; then
    kill "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=
  fi
}
cleanup() {
  stop_dev
  "$here/scripts/peer-workerd.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# run_dev NAME [ENV=VALUE …] -- STEAD-DEV-ARGS…: starts `stead dev` (its log in $out/dev-NAME.log)
# and waits until it answers.
run_dev() {
  local name=$1 env=()
  shift
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  env "${env[@]}" "$bin/stead" dev --port "$port" "$@" >"$out/dev-$name.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "$url/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "stead dev ($name) did not come up; see $out/dev-$name.log" >&2
  return 1
}

hdr() { echo "== $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"; }
