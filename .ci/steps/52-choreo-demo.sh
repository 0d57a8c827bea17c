#!/usr/bin/env bash
# The choreographed checkout's demo (`tandem choreo demo`): the five scenarios over NATS
# JetStream, each checked through the orders entry point, the stream and the services' own
# records; exits non-zero if any ends unexpectedly. It needs the shared NATS server on
# 127.0.0.1:4222: started here (as 10-postgres does) when it is down. `cargo demo` (50-demo)
# stays NATS-free.
set -euo pipefail
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "starting NATS"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    for _ in $(seq 1 50); do
        (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
        sleep 0.1
    done
fi
NATS_URL=nats://127.0.0.1:4222 cargo tandem choreo demo
