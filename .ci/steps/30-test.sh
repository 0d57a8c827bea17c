#!/usr/bin/env bash
# The README's test command: every test through cargo-nextest (.config/nextest.toml), then the
# doc tests (nextest does not run those).
set -euo pipefail
cargo nextest run --workspace --locked
cargo test --workspace --doc --locked
