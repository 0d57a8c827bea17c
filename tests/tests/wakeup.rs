//! Waking idle instances (LISTEN/NOTIFY), with the real binaries and a poll interval of two
//! minutes, so only a wake-up can explain a saga taken over within the test's bound:
//! - sagas an instance turns away because every slot is busy go to an idle instance at once;
//! - leases handed back at a graceful shutdown go to an idle instance at once;
//! - the same after a Postgres restart (a throwaway cluster): the listeners reconnect;
//! - one release statement sends one NOTIFY however many leases it hands back, and none when it
//!   releases nothing.
//!
//! Leases last two minutes too, so expiry cannot explain it either. The bound (30 s) is far above
//! what a wake-up takes (well under a second) and far below the poll interval.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::cluster::{Cluster, ClusterConfig};
use tandem_tests::eventually;
use tandem_tests::pgcluster::PgCluster;

const POLL_MS: &str = "120000";
const BOUND: Duration = Duration::from_secs(30);

fn cluster(name: &str, extra: &[(&str, String)]) -> Cluster {
    cluster_on(name, extra, None)
}

fn cluster_on(name: &str, extra: &[(&str, String)], server_url: Option<String>) -> Cluster {
    let mut cfg = ClusterConfig::new(name, 2)
        .env("POLL_INTERVAL_MS", POLL_MS)
        .env("LEASE_TTL_MS", "120000");
    for (k, v) in extra {
        cfg = cfg.env(k, v.clone());
    }
    if let Some(url) = server_url {
        cfg.server_url = url;
    }
    Cluster::new(cfg)
}

/// Wait until every saga in `ids` is completed, at most until `deadline`; the final states.
async fn all_completed(c: &Client, ids: &[String], deadline: Instant, what: &str) -> Vec<Value> {
    let mut done = Vec::new();
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = eventually(left, what, || async move {
            let s = c.wait_saga(id, 1).await.ok()?;
            (s["status"] == "completed").then_some(s)
        })
        .await;
        done.push(s);
    }
    done
}

/// [`all_completed`] by `start` + [`BOUND`], each saga claimed by another instance than the
/// one it started on (lease epoch above 1): the sagas and the time they took from `start`.
async fn taken_over(
    c: &Client,
    ids: &[String],
    start: Instant,
    what: &str,
) -> (Vec<Value>, Duration) {
    let done = all_completed(c, ids, start + BOUND, what).await;
    let took = start.elapsed();
    for s in &done {
        assert!(
            s["lease"]["epoch"].as_i64().unwrap() > 1,
            "claimed by another instance: {s}"
        );
    }
    (done, took)
}

fn has_event(s: &Value, kind: &str, step: &str) -> bool {
    demo::event_index(s, kind, Some(step)).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_a_busy_instance_turns_away_go_to_an_idle_one_at_once() {
    // orch-0 has one slot, held for a minute by a saga whose inventory call is slow (its
    // definition allows a 90 s call); the next sagas posted to it are handed back, and orch-1
    // (idle, polling every two minutes) must take them over on the release's NOTIFY.
    let defs = std::env::temp_dir().join(format!(
        "tandem-wakeup-defs-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = json!("checkout_hold");
    def["policy"]["timeout_ms"] = json!(90_000);
    std::fs::create_dir_all(&defs).unwrap();
    std::fs::write(
        defs.join("checkout_hold.json"),
        serde_json::to_vec(&def).unwrap(),
    )
    .unwrap();
    let mut cluster = cluster(
        "wakebusy",
        &[
            ("MAX_ACTIVE_SAGAS", "1".to_string()),
            ("DEFINITIONS_DIR", defs.display().to_string()),
        ],
    );
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.set_stock("wake-sku", 100).await.unwrap();

    a.add_fault(
        "inventory",
        &json!({"order_id": "hold", "kind": "latency", "latency_ms": 60_000}),
    )
    .await
    .unwrap();
    let input = checkout_input("hold", "wake-sku", 1, "tok_visa", "GB");
    let hold = tandem_tests::start(&a, "checkout_hold", &input).await;
    let s = tandem_tests::saga_reaches(&a, &hold, "step_started", "reserve_inventory").await;
    assert_eq!(s["lease"]["owner"], "orch-0", "{s}");

    let start = Instant::now();
    let mut ids = Vec::new();
    for i in 0..4 {
        let input = checkout_input(&format!("busy-{i}"), "wake-sku", 1, "tok_visa", "GB");
        ids.push(tandem_tests::start(&a, "checkout", &input).await);
    }
    let what = "orch-1 to finish the sagas orch-0 turned away";
    let (_, took) = taken_over(&b, &ids, start, what).await;
    let held = a.wait_saga(&hold, 0).await.unwrap();
    assert_eq!(
        held["status"], "running",
        "orch-0's only slot was still busy"
    );
    eprintln!("4 sagas turned away by a busy instance finished on an idle one in {took:?}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&defs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_handed_back_at_a_graceful_shutdown_go_to_an_idle_instance_at_once() {
    let mut cluster = cluster("wakestop", &[]);
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    shutdown_hands_over(&mut cluster).await;
}

/// Wait until `n` sessions on the cluster's orchestrator database are listening.
async fn listeners(cluster: &Cluster, n: i64) {
    let url = cluster.db_url("orchestrator");
    eventually(
        Duration::from_secs(30),
        "the orchestrators to LISTEN",
        || {
            let url = url.clone();
            async move {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .ok()?;
                let listening: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
                )
                .fetch_one(&mut c)
                .await
                .ok()?;
                let _ = sqlx::Connection::close(c).await;
                (listening >= n).then_some(())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_postgres_restart_the_listeners_come_back() {
    let Some(pg) = PgCluster::create() else {
        return PgCluster::missing();
    };
    let mut cluster = cluster_on("wakepg", &[], Some(pg.url()));
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    // Healthy is not listening yet: the LISTEN connection opens after the start. Wait for both
    // (their sessions on the orchestrator database), or a late one only fails to connect.
    listeners(&cluster, 2).await;
    pg.stop();
    for i in 0..2 {
        let node = cluster.orchestrator(i);
        eventually(
            Duration::from_secs(30),
            "the LISTEN connection to drop",
            || {
                let lost = cluster.log(node).contains("the LISTEN connection");
                async move { lost.then_some(()) }
            },
        )
        .await;
    }
    pg.start();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    for i in 0..2 {
        let node = cluster.orchestrator(i);
        eventually(Duration::from_secs(30), "the listener to reconnect", || {
            let back = cluster.log(node).contains("listening for work again");
            async move { back.then_some(()) }
        })
        .await;
    }
    shutdown_hands_over(&mut cluster).await;
    drop(cluster);
    drop(pg);
}

/// orch-0 drives five sagas, each with a call in flight, and stops gracefully (SIGTERM): orch-1,
/// idle, finishes them within [`BOUND`].
async fn shutdown_hands_over(cluster: &mut Cluster) {
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.set_stock("stop-sku", 100).await.unwrap();

    // Five sagas driven by orch-0, each with its payment call in flight (3 s; the step's
    // timeout is 5 s).
    for i in 0..5 {
        a.add_fault(
            "payment",
            &json!({"order_id": format!("stop-{i}"), "kind": "latency", "latency_ms": 3000}),
        )
        .await
        .unwrap();
    }
    let ids = tandem_tests::start_checkouts(&a, "stop", "stop-sku", 5).await;
    for id in &ids {
        let s = tandem_tests::saga_reaches(&b, id, "step_started", "charge_payment").await;
        assert_eq!(s["lease"]["owner"], "orch-0", "{s}");
        assert_eq!(s["status"], "running", "{s}");
    }

    // SIGTERM: orch-0 lets its calls finish, records them and hands the leases back.
    let start = Instant::now();
    let o0 = cluster.orchestrator(0);
    cluster.proc(o0).signal("TERM").unwrap();
    let what = "orch-1 to finish the sagas orch-0 handed back";
    let (done, took) = taken_over(&b, &ids, start, what).await;
    for s in &done {
        assert!(
            has_event(s, "step_succeeded", "create_shipment"),
            "{}",
            demo::timeline(s)
        );
    }
    let exit = eventually(Duration::from_secs(30), "orch-0 to exit", || {
        let e = cluster.proc(o0).exited();
        async move { e }
    })
    .await;
    assert!(exit.success(), "orch-0 stopped gracefully: {exit:?}");
    eprintln!("5 sagas handed back at shutdown finished on an idle instance in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_release_statement_sends_one_notification() {
    use orchestrator::store;
    let db = tandem_kit::testing::fresh_database("wakenotify").await;
    let pool = tandem_kit::db::connect(&db.first_url(), 3).await.unwrap();
    store::MIGRATOR.run(&pool).await.unwrap();
    sqlx::query("INSERT INTO definitions (name, version, body) VALUES ('d', 'v', '{}')")
        .execute(&pool)
        .await
        .unwrap();
    let ids: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO sagas (id, definition, version, input, input_hash, status, state, \
             next_run_at, lease_owner, lease_until, lease_epoch) \
         SELECT id, 'd', 'v', '{}', 'h', 'running', '{}', now(), 'me', now() + interval '1 hour', 3 \
         FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids)
    .execute(&pool)
    .await
    .unwrap();
    let mut listener = orchestrator::wake::connect_listener(&pool).await.unwrap();
    // A stale epoch releases nothing and announces nothing.
    let n = store::release_leases(&pool, &ids, &[2; 5], "me")
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        next_notification(&mut listener).await.is_none(),
        "nothing released, nothing announced"
    );

    // Five leases in one statement: one notification, with the releaser's id.
    let n = store::release_leases(&pool, &ids, &[3; 5], "me")
        .await
        .unwrap();
    assert_eq!(n, 5);
    let first = next_notification(&mut listener)
        .await
        .expect("the release is announced");
    assert_eq!(first.channel(), store::WORK_CHANNEL);
    assert_eq!(first.payload(), "me");
    assert!(
        next_notification(&mut listener).await.is_none(),
        "one NOTIFY per statement"
    );
    let leased: i64 = sqlx::query_scalar("SELECT count(lease_owner) FROM sagas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leased, 0);
}

/// The next notification within 500 ms, if any.
async fn next_notification(
    l: &mut sqlx::postgres::PgListener,
) -> Option<sqlx::postgres::PgNotification> {
    match tokio::time::timeout(Duration::from_millis(500), l.try_recv()).await {
        Ok(r) => Some(r.unwrap().expect("the listener stays connected")),
        Err(_) => None,
    }
}
