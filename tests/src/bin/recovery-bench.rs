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
use tandem_cli::client::{Client, checkout_input};
use tandem_tests::cluster::{Cluster, ClusterConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The real binaries: three services, orchestrators `orch-0` and `orch-1` running, `orch-2`
/// configured (started after the kill).
async fn start_cluster(sagas: usize, ttl_ms: u64) -> Cluster {
    let mut cfg = ClusterConfig::new("recbench", 3)
        .env("LEASE_TTL_MS", ttl_ms.to_string())
        .env("MAX_ACTIVE_SAGAS", (sagas + 64).to_string());
    cfg.orchestrator_pool = 10;
    cfg.service_pool = 8;
    let mut cluster = Cluster::new(cfg);
    let (o0, o1) = (cluster.orchestrator(0), cluster.orchestrator(1));
    for node in [0, 1, 2, o0, o1] {
        cluster.start(node, None);
    }
    for node in [0, 1, 2, o0, o1] {
        cluster.wait_healthy(node, Duration::from_secs(120)).await;
    }
    cluster
}

/// `sagas` checkouts, each held in flight by a 60 s latency fault on its inventory call, until
/// every such call is being served.
async fn hold_in_flight(clients: &[Client; 2], sagas: usize) -> anyhow::Result<()> {
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
    loop {
        let faults = clients[0]
            .get(&format!("{}/faults", clients[0].inventory))
            .await?;
        let fired = faults
            .body
            .as_array()
            .map_or(0, |a| a.iter().filter(|f| f["remaining"] == 0).count());
        if fired == sagas {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leases at the kill (seconds from now, database clock).
struct AtKill {
    /// The last event before the kill.
    seq: i64,
    in_flight: i64,
    leased: i64,
    first_expiry: f64,
    last_expiry: f64,
}

/// Snapshot the leases the dead orchestrators held (table `bench_kill`).
async fn snapshot_leases(db: &mut PgConnection) -> anyhow::Result<AtKill> {
    let seq: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM saga_events")
        .fetch_one(&mut *db)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_kill AS SELECT id, lease_until, lease_owner FROM sagas WHERE next_run_at IS NOT NULL",
    )
    .execute(&mut *db)
    .await?;
    let row = sqlx::query(
        "SELECT count(*) AS n, count(lease_owner) AS leased, \
                extract(epoch FROM min(lease_until) - now())::float8 AS first_expiry, \
                extract(epoch FROM max(lease_until) - now())::float8 AS last_expiry \
         FROM bench_kill",
    )
    .fetch_one(&mut *db)
    .await?;
    Ok(AtKill {
        seq,
        in_flight: row.get("n"),
        leased: row.get("leased"),
        first_expiry: row.get("first_expiry"),
        last_expiry: row.get("last_expiry"),
    })
}

/// Poll `sql` (a count) until `done(count)`, at most `limit` after `since`; the seconds since.
async fn wait_count(
    db: &mut PgConnection,
    sql: &'static str,
    bind: Option<i64>,
    done: impl Fn(i64) -> bool,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<f64> {
    loop {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(bind)
            .fetch_one(&mut *db)
            .await?;
        if done(n) {
            return Ok(since.elapsed().as_secs_f64());
        }
        anyhow::ensure!(since.elapsed() < limit, "{sql}: {n} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per saga, its first new event relative to the expiry of the lease it had at the kill
/// (seconds): p50, p99, max, min, and the last one relative to the last expiry.
struct Resumed {
    n: i64,
    p50: f64,
    p99: f64,
    worst: f64,
    best: f64,
    all_after: f64,
}

async fn resume_delays(db: &mut PgConnection, kill_seq: i64) -> anyhow::Result<Resumed> {
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
    .fetch_one(db)
    .await?;
    Ok(Resumed {
        n: r.get("n"),
        p50: r.get("p50"),
        p99: r.get("p99"),
        worst: r.get("worst"),
        best: r.get("best"),
        all_after: r.get("all_after_last_expiry"),
    })
}

/// The summary and one JSON line.
fn print(sagas: usize, ttl_ms: u64, k: &AtKill, r: &Resumed, walls: [f64; 3]) {
    let [created_secs, resumed_wall, completed_wall] = walls;
    println!(
        "recovery-bench ({sagas} in-flight sagas, lease TTL {ttl_ms} ms, 2 orchestrators killed, 1 new instance started)"
    );
    println!("  sagas created and in flight:         {created_secs:.1} s");
    println!(
        "  in flight at the kill / leased:      {} / {}",
        k.in_flight, k.leased
    );
    println!(
        "  leases expire after the kill:        {:.2} s … {:.2} s",
        k.first_expiry, k.last_expiry
    );
    println!("  every saga resumed (new event):      {resumed_wall:.2} s after the kill");
    println!(
        "  first new event after lease expiry:  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0} ms)",
        r.p50 * 1e3,
        r.p99 * 1e3,
        r.worst * 1e3,
        r.best * 1e3
    );
    println!(
        "  all resumed after the last expiry:   {:.0} ms (target ≤ 2000 ms)",
        r.all_after * 1e3
    );
    println!("  every saga completed:                {completed_wall:.2} s after the kill");
    println!(
        "{}",
        json!({
            "bench": "recovery", "sagas": sagas, "lease_ttl_ms": ttl_ms, "resumed": r.n,
            "in_flight_at_kill": k.in_flight,
            "lease_expiry_after_kill_s": [k.first_expiry, k.last_expiry],
            "resumed_after_kill_s": resumed_wall,
            "after_lease_expiry_ms": {"p50": r.p50 * 1e3, "p99": r.p99 * 1e3, "max": r.worst * 1e3, "min": r.best * 1e3},
            "all_resumed_after_last_expiry_ms": r.all_after * 1e3,
            "completed_after_kill_s": completed_wall,
        })
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sagas = env_u64("SAGAS", 1000) as usize;
    let ttl_ms = env_u64("LEASE_TTL_MS", 5000);
    let mut cluster = start_cluster(sagas, ttl_ms).await;
    let (o0, o1, o2) = (
        cluster.orchestrator(0),
        cluster.orchestrator(1),
        cluster.orchestrator(2),
    );
    let clients = [cluster.client(0), cluster.client(1)];
    clients[0].set_stock("bench-sku", 1_000_000_000).await?;
    eprintln!(
        "recovery-bench: {sagas} sagas, lease TTL {ttl_ms} ms; logs in {}",
        cluster.log_dir.display()
    );
    let t = Instant::now();
    hold_in_flight(&clients, sagas).await?;
    let created_secs = t.elapsed().as_secs_f64();

    // Kill every orchestrator; snapshot the leases they held.
    cluster.kill9(o0);
    cluster.kill9(o1);
    let killed = Instant::now();
    let mut db = PgConnection::connect(&cluster.db_url("orchestrator")).await?;
    let k = snapshot_leases(&mut db).await?;

    // A new instance resumes them once the leases expire, and they finish.
    cluster.start(o2, None);
    let all = |n: i64| n as usize >= sagas;
    let resumed_wall = wait_count(
        &mut db,
        "SELECT count(DISTINCT saga_id) FROM saga_events WHERE seq > $1",
        Some(k.seq),
        all,
        killed,
        Duration::from_secs(300),
    )
    .await?;
    let r = resume_delays(&mut db, k.seq).await?;
    let completed_wall = wait_count(
        &mut db,
        "SELECT count(*) FROM sagas WHERE status <> 'completed'",
        None,
        |open| open == 0,
        killed,
        Duration::from_secs(600),
    )
    .await?;
    let _ = db.close().await;

    let walls = [created_secs, resumed_wall, completed_wall];
    print(sagas, ttl_ms, &k, &r, walls);
    Ok(())
}
