#!/usr/bin/env bash
# 2PC's blocking case on the real processes (docs/commit-protocols.md, "The blocking case, live"):
# the coordinator crashes after three YES votes, a saga waits on the prepared row lock, the
# restarted coordinator finishes — both endings. Exits non-zero when it observes anything other
# than what it explains. Uses the binaries 30-test built (next to `tandem` in target/debug).
set -euo pipefail
cargo tandem commit demo 2pc-blocking
