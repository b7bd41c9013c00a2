#!/usr/bin/env bash
# The test command: formatting, lints, every binary (the tests start real processes), then all
# tests of the workspace. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# One version everywhere (Cargo.toml, Cargo.lock, the chart, the examples, the docs, and what the
# binaries just built say to --version); every workflow through actionlint.
scripts/version-check.sh --binaries "${CARGO_TARGET_DIR:-target}/debug"
scripts/workflow-check.sh
# The operator's envtest tier (operator/tests/envtest.rs) needs kube-apiserver and etcd: built
# from Go modules once and cached; a failed build stops here, loudly.
scripts/envtest.sh >/dev/null
# The TypeScript SDK's dependencies (esbuild): `stead dev`'s Workers-project tests run its runner.
(cd sdk-ts && npm ci --no-audit --no-fund --loglevel=error)
cargo test --workspace
# The TypeScript SDK (sdk-ts/): Node's test runner against real sidecars (the binaries above).
(cd sdk-ts && npm test)
# The Helm chart and the example manifests: helm lint, helm template | kubeconform -strict.
scripts/helm-check.sh
# The one-node cluster tier (scripts/node-e2e.sh): a real kubelet, containerd and kube-proxy on
# this machine, the chart installed, the examples applied, the Kubernetes scenarios run. It needs
# root; elsewhere it says so, unless STEAD_REQUIRE_NODE_TIER=1 (CI) makes that a failure.
if [[ "$(id -u)" == 0 ]]; then
  scripts/node-e2e.sh
elif [[ "${STEAD_REQUIRE_NODE_TIER:-}" == 1 ]]; then
  echo "test: the one-node cluster tier needs root (scripts/node-e2e.sh)" >&2
  exit 1
else
  echo "test: skipped the one-node cluster tier: it needs root (sudo scripts/node-e2e.sh)" >&2
fi
