#!/usr/bin/env bash
# The README's demo command: exits non-zero if any scenario ends unexpectedly.
set -euo pipefail
cargo demo
