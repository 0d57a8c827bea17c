#!/usr/bin/env bash
# Formatting and clippy (warnings are errors; too_many_lines is on, see Cargo.toml).
set -euo pipefail
# Print the free space so a linker dying of a full disk is recognisable in the log.
df -h . | tail -1
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
