#!/usr/bin/env bash
# CI step: validate compose.yaml with docker-compose (no Docker engine is needed for `config`,
# and none runs on these machines: the file is checked, never started).
# tests/tests/compose.rs checks what the file means to Tandem (binaries and their settings).
# Runs alone too: `bash .ci/steps/40-compose.sh`. Idempotent; a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v docker-compose >/dev/null 2>&1; then
    echo "installing Debian's docker-compose"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

# Every service, the `dev` profile's included, is validated. No secrets are needed: compose.yaml
# interpolates them with defaults (the Postgres image and deploy/postgres-init.sh refuse empty
# passwords when the stack starts).
docker-compose -f compose.yaml config -q
echo "compose.yaml: valid (docker-compose $(dpkg-query -W -f='${Version}' docker-compose))"
