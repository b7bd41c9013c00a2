#!/usr/bin/env bash
# Builds and installs what the one-node cluster tier (scripts/node-e2e.sh) runs, once, and prints
# the bin dir on stdout:
#   - from Debian: containerd, runc, the CNI plugins, iptables, buildah (apt-get, when missing);
#   - from the Go module k8s.io/kubernetes (the module scripts/envtest.sh builds kube-apiserver
#     from; same source folder, same build cache): kubelet, kube-controller-manager,
#     kube-scheduler, kube-proxy, kubectl;
#   - crictl (sigs.k8s.io/cri-tools), a CoreDNS with only the plugins a cluster DNS needs, and
#     `promlint` (Prometheus's metrics linter from client_golang, the code `promtool check
#     metrics` runs);
#   - `pause`, compiled statically from the pause.c in the kubernetes module.
# Everything lands in ${STEAD_NODE_TOOLS:-$HOME/.cache/stead-node}/bin; reruns are no-ops.
# `scripts/node-tools.sh promlint` builds only the linter (all the kind tier needs of these).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${STEAD_ENVTEST_KUBE_VERSION:-v1.34.4}"
COREDNS_VERSION=v1.12.4
CRI_TOOLS_VERSION=v1.34.0
CLIENT_GOLANG_VERSION=v1.23.2

TOOLS="${STEAD_NODE_TOOLS:-$HOME/.cache/stead-node}"
BIN="$TOOLS/bin"
SRC="$TOOLS/src"
mkdir -p "$BIN" "$SRC"

say() { echo "node-tools: $*" >&2; }
fail() {
  echo "node-tools: FAILED: $*" >&2
  exit 1
}

# Debian's packages. conntrack is what kube-proxy runs to drop stale UDP entries.
install_packages() {
  need_pkgs=()
  for pair in containerd:containerd runc:runc iptables:iptables buildah:buildah conntrack:conntrack \
    gcc:gcc openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
  done
  [[ -x /usr/lib/cni/bridge ]] || need_pkgs+=(containernetworking-plugins)
  if ((${#need_pkgs[@]})); then
    say "installing ${need_pkgs[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null || fail "apt-get install ${need_pkgs[*]}"
  fi
}

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

build_kube() {
  # The kubernetes module folder scripts/envtest.sh prepared (it builds kube-apiserver there).
  ENVTEST_BIN="$(scripts/envtest.sh)"
  KUBE_SRC="$(dirname "$ENVTEST_BIN")/src/kubernetes-$KUBE_VERSION"
  [[ -f "$KUBE_SRC/go.mod" ]] || fail "no $KUBE_SRC/go.mod (scripts/envtest.sh makes it)"

  kube_ldflags="-s -w"
  kube_ldflags+=" -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  kube_ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  # kubectl reports its version from client-go's copy of the version package.
  kube_ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"

  for cmd in kubelet kube-controller-manager kube-scheduler kube-proxy kubectl; do
    if [[ -x "$BIN/$cmd" && "$(cat "$BIN/.$cmd.version" 2>/dev/null)" == "$KUBE_VERSION" ]]; then
      continue
    fi
    say "building $cmd $KUBE_VERSION"
    (cd "$KUBE_SRC" && go build -trimpath -ldflags "$kube_ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") ||
      fail "building $cmd (see the go output above)"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
    echo "$KUBE_VERSION" >"$BIN/.$cmd.version"
  done
}

# A Go main in its own module folder: go_tool NAME VERSION-STAMP MODULE@VERSION PACKAGE [main.go]
go_tool() {
  local name=$1 stamp=$2 require=$3 pkg=$4 main=${5:-}
  if [[ -x "$BIN/$name" && "$(cat "$BIN/.$name.version" 2>/dev/null)" == "$stamp" ]]; then
    return
  fi
  local dir="$SRC/$name"
  say "building $name ($stamp)"
  rm -rf "$dir"
  mkdir -p "$dir"
  printf 'module stead.dev/node/%s\n\ngo 1.24\n' "$name" >"$dir/go.mod"
  [[ -z "$main" ]] || printf '%s\n' "$main" >"$dir/main.go"
  (cd "$dir" && go get "$require" && go build -trimpath -ldflags "-s -w" -o "$BIN/$name.tmp" "$pkg") ||
    fail "building $name (see the go output above)"
  mv "$BIN/$name.tmp" "$BIN/$name"
  echo "$stamp" >"$BIN/.$name.version"
}

build_crictl() {
  go_tool crictl "$CRI_TOOLS_VERSION" "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
}

# CoreDNS with the plugins of a cluster DNS and nothing else: the full module links every cloud
# provider's SDK for its other plugins.
build_coredns() {
  go_tool coredns "$COREDNS_VERSION-cluster" "github.com/coredns/coredns@$COREDNS_VERSION" . '
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"errors", "log", "health", "ready", "cache", "loadbalance", "kubernetes"}
}

func main() { coremain.Run() }'
}

# `promtool check metrics` is client_golang's promlint over stdin; this is that call alone (the
# promtool module links every service-discovery SDK).
build_promlint() {
go_tool promlint "$CLIENT_GOLANG_VERSION" "github.com/prometheus/client_golang@$CLIENT_GOLANG_VERSION" . '
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// Reads the text exposition format on stdin; prints every problem and exits 3 when there is
// one, like `promtool check metrics`.
func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error while linting:", err)
		os.Exit(1)
	}
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "%s %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(3)
	}
}'
}

# The pause container's binary, from the kubernetes module's own source.
build_pause() {
  if [[ ! -x "$BIN/pause" || "$(cat "$BIN/.pause.version" 2>/dev/null)" != "$KUBE_VERSION" ]]; then
    pause_c="$(cd "$KUBE_SRC" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    [[ -f "$pause_c" ]] || fail "no pause.c at $pause_c"
    say "compiling pause from $pause_c"
    gcc -Os -Wall -Werror -static -DVERSION="$KUBE_VERSION-stead" -o "$BIN/pause.tmp" "$pause_c" ||
      fail "compiling pause.c (Debian's gcc with static glibc)"
    mv "$BIN/pause.tmp" "$BIN/pause"
    echo "$KUBE_VERSION" >"$BIN/.pause.version"
  fi
}

if [[ "${1:-}" == promlint ]]; then
  build_promlint
else
  install_packages
  build_kube
  build_crictl
  build_coredns
  build_promlint
  build_pause
fi
echo "$BIN"
