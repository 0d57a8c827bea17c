//! What the test suite needs, checked before any test runs (nextest runs this as a setup
//! script, `.config/nextest.toml`): Postgres with prepared transactions, and NATS (the
//! `nats-server` binary: the choreography tests start private servers from it). Without them
//! the suite would fail in hundreds of places; this says once what is missing and how to get
//! it, and exits non-zero. (Optional tools — strace, chromium, initdb — are each checked by the
//! tests that use them: they skip outside CI.)
//!
//! Postgres: `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! NATS: `NATS_SERVER` (default `/usr/sbin/nats-server`).

use std::process::ExitCode;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

/// The prepared transactions the 2PC, 3PC and Paxos Commit tests hold at once, at most.
const MIN_PREPARED: i64 = 64;

const HOW: &str = "Postgres: `docker compose --profile dev up -d postgres-dev` (compose.yaml: \
     max_prepared_transactions = 256), or point TEST_DATABASE_URL at your own. NATS: `apt-get \
     install nats-server`, or point NATS_SERVER at the binary. The demo (`cargo demo`) needs \
     neither.";

async fn postgres(url: &str) -> Result<(), String> {
    let connect = PgConnection::connect(url);
    let mut conn = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("Postgres at {url} is not reachable: {e}")),
        Err(_) => return Err(format!("Postgres at {url} did not answer within 5 s")),
    };
    let mpt: String = sqlx::query_scalar("SHOW max_prepared_transactions")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("Postgres at {url}: {e}"))?;
    let mpt: i64 = mpt.parse().unwrap_or(0);
    if mpt < MIN_PREPARED {
        return Err(format!(
            "Postgres at {url} has max_prepared_transactions = {mpt}; the two-phase commit \
             tests need at least {MIN_PREPARED} (ALTER SYSTEM SET max_prepared_transactions = \
             256, then restart Postgres)"
        ));
    }
    Ok(())
}

fn nats() -> Result<(), String> {
    let bin = std::env::var("NATS_SERVER")
        .unwrap_or_else(|_| tandem_kit::choreo::nats_testing::DEFAULT_BINARY.to_string());
    match std::process::Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("NATS: `{bin} --version` failed ({})", out.status)),
        Err(e) => Err(format!("NATS: the server binary {bin} cannot run: {e}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let pg = tandem_kit::testing::server_url();
    let missing: Vec<String> = [postgres(&pg).await, nats()]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if missing.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("The tests cannot run: what they need is missing.");
    for m in &missing {
        eprintln!("  - {m}");
    }
    eprintln!("{HOW}");
    ExitCode::FAILURE
}
