#!/usr/bin/env bash
# Runs the runtime's loom models (src/runtime/models.rs): every interleaving of
# each scenario's threads, up to LOOM_MAX_PREEMPTIONS preemptions (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-3}
RUSTFLAGS="--cfg astra_loom ${RUSTFLAGS:-}" CARGO_TARGET_DIR=target/loom \
    cargo test --release --lib models -- --test-threads=2 "$@"
