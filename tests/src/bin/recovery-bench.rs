//! Recovery benchmark: how fast do orphaned sagas resume after every orchestrator dies?
//!
//! `cargo run --release -p tandem-tests --bin recovery-bench` (env: `SAGAS`, default 1000;
//! `LEASE_TTL_MS`, default 5000; Postgres from `TEST_DATABASE_URL`, default the local server).
//!
//! 1. The real binaries: the three services and two orchestrators (`orch-0`, `orch-1`), default
//!    claim batch and poll interval.
//! 2. `SAGAS` checkouts, each held in flight by a 60 s latency fault on its inventory call.
//! 3. `kill -9` both orchestrators; the leases they held are snapshotted (database clock).
//! 4. Start a third instance (`orch-2`, a new identity, so it must wait for the leases to expire
//!    rather than reclaim its own) and measure, per saga, when its first new event is recorded,
//!    relative to the expiry of the lease it had when its owner died.
//!
//! Prints a summary and one JSON line.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use tandem_cli::client::checkout_input;
use tandem_tests::cluster::{Cluster, ClusterConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sagas = env_u64("SAGAS", 1000) as usize;
    let ttl_ms = env_u64("LEASE_TTL_MS", 5000);
    let mut cfg = ClusterConfig::new("recbench", 3)
        .env("LEASE_TTL_MS", ttl_ms.to_string())
        .env("MAX_ACTIVE_SAGAS", (sagas + 64).to_string());
    cfg.orchestrator_pool = 10;
    cfg.service_pool = 8;
    let mut cluster = Cluster::new(cfg);
    let (o0, o1, o2) = (
        cluster.orchestrator(0),
        cluster.orchestrator(1),
        cluster.orchestrator(2),
    );
    for node in 0..3 {
        cluster.start(node, None);
    }
    cluster.start(o0, None);
    cluster.start(o1, None);
    for node in [0, 1, 2, o0, o1] {
        cluster.wait_healthy(node, Duration::from_secs(120)).await;
    }
    let clients = [cluster.client(0), cluster.client(1)];
    clients[0].set_stock("bench-sku", 1_000_000_000).await?;
    eprintln!(
        "recovery-bench: {sagas} sagas, lease TTL {ttl_ms} ms; logs in {}",
        cluster.log_dir.display()
    );

    // In-flight sagas: the inventory call of each sleeps 60 s.
    let t = Instant::now();
    futures::stream::iter(0..sagas)
        .map(|i| {
            let c = clients[i % 2].clone();
            async move {
                let order = format!("bench-{i}");
                c.add_fault(
                    "inventory",
                    &json!({"order_id": order, "kind": "latency", "latency_ms": 60_000}),
                )
                .await?;
                let r = c
                    .start_saga(
                        "checkout",
                        &checkout_input(&order, "bench-sku", 1, "tok_visa", "GB"),
                        None,
                    )
                    .await?;
                anyhow::ensure!(r.status == 201, "POST /sagas: {} {}", r.status, r.body);
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<()>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    // Wait until every inventory call is being served (each fault fired).
    loop {
        let faults = clients[0]
            .get(&format!("{}/faults", clients[0].inventory))
            .await?;
        let fired = faults
            .body
            .as_array()
            .map_or(0, |a| a.iter().filter(|f| f["remaining"] == 0).count());
        if fired == sagas {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created_secs = t.elapsed().as_secs_f64();

    // Kill every orchestrator; snapshot the leases they held.
    cluster.kill9(o0);
    cluster.kill9(o1);
    let killed = Instant::now();
    let mut db = PgConnection::connect(&cluster.db_url("orchestrator")).await?;
    let kill_seq: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM saga_events")
        .fetch_one(&mut db)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_kill AS SELECT id, lease_until, lease_owner FROM sagas WHERE next_run_at IS NOT NULL",
    )
    .execute(&mut db)
    .await?;
    let row = sqlx::query(
        "SELECT count(*) AS n, count(lease_owner) AS leased, \
                extract(epoch FROM min(lease_until) - now())::float8 AS first_expiry, \
                extract(epoch FROM max(lease_until) - now())::float8 AS last_expiry \
         FROM bench_kill",
    )
    .fetch_one(&mut db)
    .await?;
    let in_flight: i64 = row.get("n");
    let leased: i64 = row.get("leased");
    let first_expiry: f64 = row.get("first_expiry");
    let last_expiry: f64 = row.get("last_expiry");

    // A new instance resumes them once the leases expire.
    cluster.start(o2, None);
    let resumed_wall = loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT saga_id) FROM saga_events WHERE seq > $1")
                .bind(kill_seq)
                .fetch_one(&mut db)
                .await?;
        if n as usize >= sagas {
            break killed.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(300),
            "only {n} of {sagas} sagas resumed after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = sqlx::query(
        "WITH first AS (SELECT saga_id, min(at) AS at FROM saga_events WHERE seq > $1 GROUP BY saga_id), \
              d AS (SELECT extract(epoch FROM f.at - k.lease_until)::float8 AS after_expiry, f.at, k.lease_until \
                    FROM first f JOIN bench_kill k ON k.id = f.saga_id) \
         SELECT count(*) AS n, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY after_expiry) AS p50, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY after_expiry) AS p99, \
                max(after_expiry) AS worst, min(after_expiry) AS best, \
                extract(epoch FROM max(at) - max(lease_until))::float8 AS all_after_last_expiry \
         FROM d",
    )
    .bind(kill_seq)
    .fetch_one(&mut db)
    .await?;
    let (n, p50, p99, worst, best, all_after): (i64, f64, f64, f64, f64, f64) = (
        r.get("n"),
        r.get("p50"),
        r.get("p99"),
        r.get("worst"),
        r.get("best"),
        r.get("all_after_last_expiry"),
    );

    // And they finish.
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sagas WHERE status <> 'completed'")
                .fetch_one(&mut db)
                .await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(600),
            "{open} sagas still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completed_wall = killed.elapsed().as_secs_f64();
    let _ = db.close().await;

    println!(
        "recovery-bench ({sagas} in-flight sagas, lease TTL {ttl_ms} ms, 2 orchestrators killed, 1 new instance started)"
    );
    println!("  sagas created and in flight:         {created_secs:.1} s");
    println!("  in flight at the kill / leased:      {in_flight} / {leased}");
    println!("  leases expire after the kill:        {first_expiry:.2} s … {last_expiry:.2} s");
    println!("  every saga resumed (new event):      {resumed_wall:.2} s after the kill");
    println!(
        "  first new event after lease expiry:  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0} ms)",
        p50 * 1e3,
        p99 * 1e3,
        worst * 1e3,
        best * 1e3
    );
    println!(
        "  all resumed after the last expiry:   {:.0} ms (target ≤ 2000 ms)",
        all_after * 1e3
    );
    println!("  every saga completed:                {completed_wall:.2} s after the kill");
    println!(
        "{}",
        json!({
            "bench": "recovery", "sagas": sagas, "lease_ttl_ms": ttl_ms, "resumed": n,
            "in_flight_at_kill": in_flight,
            "lease_expiry_after_kill_s": [first_expiry, last_expiry],
            "resumed_after_kill_s": resumed_wall,
            "after_lease_expiry_ms": {"p50": p50 * 1e3, "p99": p99 * 1e3, "max": worst * 1e3, "min": best * 1e3},
            "all_resumed_after_last_expiry_ms": all_after * 1e3,
            "completed_after_kill_s": completed_wall,
        })
    );
    Ok(())
}
