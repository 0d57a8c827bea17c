#!/usr/bin/env bash
# 3PC unblocks 2PC's case on the real processes (docs/commit-protocols.md, "3PC over the
# services"): the 3PC coordinator dies after PreCommit and the services commit without it, while
# a 2PC coordinator dying after the votes leaves its services blocked until it returns. Then a
# partition splits 3PC ({coordinator, inventory} | {payment, shipping} from PreCommit on) and the
# invariant scan over the services finds the split; then the same partition under quorum 3PC
# (3pc-quorum): the minority blocks, holding its prepared transaction, and aborts once the
# partition heals (about 19 s for both halves). Each exits non-zero when it
# observes anything else. Uses the binaries 30-test built (target/debug).
set -euo pipefail
cargo tandem commit demo 3pc-unblocks
cargo tandem commit demo 3pc-partition
