#!/usr/bin/env bash
# What the build costs on disk, and what is left.
set -euo pipefail
du -sh target 2>/dev/null || true
df -h . | tail -1
# Test databases a passing run left behind (should be none; a failed test keeps its own).
psql -h 127.0.0.1 -U postgres -d postgres -Atc \
    "SELECT count(*) || ' tandem_t_* databases on the server' FROM pg_database WHERE datname LIKE 'tandem\_t\_%'"
