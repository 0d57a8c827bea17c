//! `tandem bench --purge-retention S`: what retention costs the hot path. For each client count,
//! the checkout runs twice in the same run on the same stack: with no purge, then with a
//! purger deleting finished sagas S seconds after they settled — forget calls to the three
//! services, then the deletes, in batches of `PURGE_BATCH` every second (`orchestrator::
//! retention`, the orchestrator's own code, run from this process against the bench's
//! orchestrator database and services). Throughput and p99 side by side, and how many sagas the
//! purger deleted meanwhile (it must keep up: the backlog of the earlier runs goes first).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::BenchArgs;
use super::measure::{LoopResult, closed_loop};
use super::target::Target;
use super::workloads::{Load, Workload};
use crate::launch::Layout;

/// One client count, without and with the purge.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeLevel {
    pub clients: usize,
    pub retention_secs: f64,
    pub off: LoopResult,
    pub on: LoopResult,
    /// Sagas the purger deleted during the `on` run (warm-up included).
    pub purged_sagas: u64,
    /// Purge passes that failed (a forget call or a delete; each is retried by the next).
    pub failed_passes: u64,
}

/// Sagas per forget call and per delete (the orchestrator's default `PURGE_BATCH`).
const BATCH: i64 = 500;
/// Time between passes.
const EVERY: Duration = Duration::from_secs(1);

/// The comparison at every client count (the bench's own stack only).
pub async fn compare(
    t: &Target,
    args: &BenchArgs,
    retention_secs: f64,
) -> anyhow::Result<Vec<PurgeLevel>> {
    anyhow::ensure!(
        args.running.orchestrator_url.is_none(),
        "--purge-retention needs the bench's own stack (its orchestrator database)"
    );
    let url = Layout::new(&args.database_url, &args.db_prefix).database_url("orchestrator");
    let pool = tandem_kit::db::connect(&url, 2).await?;
    let services = ["inventory", "payment", "shipping"]
        .map(|s| (s.to_string(), t.url(s).to_string()))
        .into_iter()
        .collect();
    let settings = orchestrator::retention::Settings {
        sagas: Some(Duration::from_secs_f64(retention_secs)),
        keys: Duration::from_secs(24 * 3600),
        batch: BATCH,
        every: EVERY,
    };
    let purger = Arc::new(orchestrator::retention::Retention::new(
        pool,
        services,
        tandem_kit::faults::sender_headers("bench-purger"),
        settings,
    )?);
    let load = Workload::Checkout.load(args);
    load.prepare(t).await?;
    let mut levels = Vec::new();
    for &clients in &args.clients {
        let label = format!("checkout C={clients} purge");
        let off = closed_loop(
            &format!("{label} off"),
            clients,
            args.window(),
            op(&*load, t, args),
        )
        .await;
        let (purged, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = tokio::spawn(purge_loop(purger.clone(), purged.clone(), failed.clone()));
        let on = closed_loop(
            &format!("{label} on"),
            clients,
            args.window(),
            op(&*load, t, args),
        )
        .await;
        task.abort();
        let _ = task.await;
        levels.push(PurgeLevel {
            clients,
            retention_secs,
            off,
            on,
            purged_sagas: purged.load(Ordering::Relaxed),
            failed_passes: failed.load(Ordering::Relaxed),
        });
    }
    Ok(levels)
}

fn op(load: &dyn Load, t: &Target, args: &BenchArgs) -> super::measure::Op {
    load.orchestrated(t, args.request)
}

/// Passes every [`EVERY`] until aborted, counting what they delete.
async fn purge_loop(
    purger: Arc<orchestrator::retention::Retention>,
    purged: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    loop {
        match purger.pass().await {
            Ok(p) => purged.fetch_add(p.sagas, Ordering::Relaxed),
            Err(e) => {
                eprintln!("purge pass failed: {e}");
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(EVERY).await;
    }
}

/// The table: per client count, throughput and p99 without and with the purge.
pub fn print(levels: &[PurgeLevel]) {
    if levels.is_empty() {
        return;
    }
    println!(
        "\nretention purge (checkout; finished sagas deleted {} s after they settle):",
        levels[0].retention_secs
    );
    println!(
        "{:>3} {:>10} {:>10} {:>7} {:>11} {:>11} {:>8} {:>7}",
        "C", "off per s", "on per s", "ratio", "off p99 ms", "on p99 ms", "purged", "failed"
    );
    for l in levels {
        let ratio = if l.off.per_sec > 0.0 {
            l.on.per_sec / l.off.per_sec
        } else {
            0.0
        };
        println!(
            "{:>3} {:>10.0} {:>10.0} {:>7.2} {:>11.2} {:>11.2} {:>8} {:>7}",
            l.clients,
            l.off.per_sec,
            l.on.per_sec,
            ratio,
            l.off.latency.p99_ms,
            l.on.latency.p99_ms,
            l.purged_sagas,
            l.failed_passes
        );
    }
}
