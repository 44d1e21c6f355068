#!/usr/bin/env bash
# Runs Orca's whole test suite: formatting, lints, unit tests and the tests
# against real services (etcd), installing the Debian packages they need.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
