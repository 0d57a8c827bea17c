#!/usr/bin/env bash
# Tools the tests call: strace (the KV store's durability test counts the fsyncs of a shard).
# Installed from Debian's packages when missing; nothing to do when present.
set -euo pipefail

missing=()
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "strace: $(strace -V | head -1)"
