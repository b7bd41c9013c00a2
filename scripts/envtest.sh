#!/usr/bin/env bash
# Builds the control plane the operator's envtest tier runs against: `kube-apiserver` (from the
# Go module k8s.io/kubernetes) and `etcd` (go.etcd.io/etcd/server/v3), once, into
# ${STEAD_ENVTEST_DIR:-$HOME/.cache/stead-envtest}/bin, and prints that bin dir on stdout.
# Reruns are no-ops when both binaries exist. Needs only Go and the Go module proxy.
# The binaries and their module cache live outside the repository; never commit them.
set -euo pipefail

KUBE_VERSION="${STEAD_ENVTEST_KUBE_VERSION:-v1.34.4}"
# The etcd that this Kubernetes release is tested with (its go.mod requires the same version).
ETCD_VERSION="${STEAD_ENVTEST_ETCD_VERSION:-v3.6.4}"

ENVTEST_DIR="${STEAD_ENVTEST_DIR:-$HOME/.cache/stead-envtest}"
BIN="$ENVTEST_DIR/bin"
SRC="$ENVTEST_DIR/src"

say() { echo "envtest: $*" >&2; }
fail() {
  echo >&2
  echo "envtest: FAILED: $*" >&2
  echo "envtest: the operator's envtest tier cannot run without kube-apiserver and etcd." >&2
  exit 1
}

STAMP="$BIN/.versions"
WANT="kubernetes $KUBE_VERSION etcd $ETCD_VERSION"
if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" && "$(cat "$STAMP" 2>/dev/null)" == "$WANT" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || fail "go is not installed (needed to build kube-apiserver and etcd)"
mkdir -p "$BIN" "$SRC"

# Use the installed toolchain; never download another one behind the user's back.
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

build_etcd() {
  local dir="$SRC/etcd-$ETCD_VERSION"
  say "building etcd $ETCD_VERSION in $dir"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<GOMOD
module stead.dev/envtest/etcd

go 1.24
GOMOD
  # `&&`, not `set -e`: bash ignores -e inside a command whose status `||` tests.
  (cd "$dir" &&
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3) || fail "building etcd $ETCD_VERSION (see the go output above)"
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_apiserver() {
  local dir="$SRC/kubernetes-$KUBE_VERSION"
  local staging="v0.${KUBE_VERSION#v1.}"
  say "building kube-apiserver $KUBE_VERSION in $dir (the first build takes a long while)"
  mkdir -p "$dir"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths
  # that do not exist outside its repository; point each at the release published with it.
  local modfile
  modfile="$(curl -fsSL "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$KUBE_VERSION.mod" 2>/dev/null)" ||
    modfile="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs cat)" ||
    fail "cannot fetch the go.mod of k8s.io/kubernetes $KUBE_VERSION from the Go module proxy"
  {
    echo "module stead.dev/envtest/kubernetes"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    printf '%s\n' "$modfile" | awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' | sort -u |
      while read -r m; do echo "	$m => $m $staging"; done
    echo ")"
  } >"$dir/go.mod"
  grep -q 'k8s.io/api =>' "$dir/go.mod" || fail "no staging modules found in k8s.io/kubernetes $KUBE_VERSION go.mod"
  local ldflags="-s -w"
  ldflags+=" -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  (cd "$dir" &&
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" &&
    go build -trimpath -ldflags "$ldflags" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver) || fail "building kube-apiserver $KUBE_VERSION (see the go output above)"
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
}

start=$SECONDS
# The whole output first, then grep: `etcd --version | grep -q` under pipefail fails whenever grep
# exits before etcd has written its last line (SIGPIPE), which made the check flaky.
etcd_is_wanted() {
  local v
  v="$("$BIN/etcd" --version 2>/dev/null)" || return 1
  grep -q "etcd Version: ${ETCD_VERSION#v}$" <<<"$v"
}
# A cached binary of another version (the versions above changed) is rebuilt.
etcd_is_wanted || build_etcd
[[ "$("$BIN/kube-apiserver" --version 2>/dev/null)" == "Kubernetes $KUBE_VERSION" ]] || build_apiserver
etcd_is_wanted ||
  fail "$BIN/etcd does not run, or is not etcd $ETCD_VERSION (remove it and run again)"
[[ "$("$BIN/kube-apiserver" --version 2>/dev/null)" == "Kubernetes $KUBE_VERSION" ]] ||
  fail "$BIN/kube-apiserver does not run, or is not $KUBE_VERSION (remove it and run again)"
echo "$WANT" >"$STAMP"
say "built $("$BIN/kube-apiserver" --version) and etcd $ETCD_VERSION in $((SECONDS - start))s"
echo "$BIN"
