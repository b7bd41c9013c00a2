#!/usr/bin/env bash
# The test command: formatting, lints, every binary (the tests start real processes), then all
# tests of the workspace. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace
