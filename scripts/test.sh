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
cargo test --workspace
# The Helm chart and the example manifests: helm lint, helm template | kubeconform -strict.
scripts/helm-check.sh
