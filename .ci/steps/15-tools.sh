#!/usr/bin/env bash
# Tools the tests call: strace (the KV store's durability test counts the fsyncs of a shard),
# from Debian's packages; cargo-nextest (the README's test command), which this machine kind
# ships, built from crates.io only when missing. Nothing to do when present.
set -euo pipefail

missing=()
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "strace: $(strace -V | head -1)"

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
echo "$(cargo nextest --version | head -1)"
