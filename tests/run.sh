#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs):
# formatting, lints, then every test (unit, property, store conformance,
# actors, end-to-end over gRPC, kill -9 crash). Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
