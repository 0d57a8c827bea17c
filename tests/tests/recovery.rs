//! Recovery with the real binaries:
//! - a stale lease holder (paused with `SIGSTOP` past its lease) is fenced: another instance
//!   takes its sagas over, and once resumed its writes are rejected and no effect is doubled;
//! - a Postgres restart (on a throwaway cluster of the test's own): every process reconnects
//!   and every saga finishes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::cluster::{Cluster, ClusterConfig, api_problems};
use tandem_tests::pgcluster::PgCluster;
use tandem_tests::{eventually, saga_reaches, slow_checkout};

async fn saga(c: &Client, id: &str) -> Value {
    c.wait_saga(id, 0).await.unwrap()
}

/// Wait until `node` logged that it lost the lease (fenced) of every saga in `ids`; how many
/// such lines it logged.
async fn fenced_lines(cluster: &Cluster, node: usize, ids: &[String]) -> usize {
    eventually(
        Duration::from_secs(30),
        "orch-0 to drop every saga (fenced)",
        || {
            let log = cluster.log(node);
            async move {
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("lease lost (fenced)"))
                    .collect();
                let all = ids.iter().all(|id| lines.iter().any(|l| l.contains(id)));
                all.then_some(lines.len())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lease_holder_is_fenced_and_nothing_is_doubled() {
    let mut cluster = Cluster::new(ClusterConfig::new("stale", 2).quick_takeover());
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    let (a, b) = (cluster.client(0), cluster.client(1));
    a.set_stock("stale-sku", 100).await.unwrap();

    // Ten sagas driven by orch-0, each with its shipment call in flight (the service is slow
    // once: 3 s, longer than the lease).
    let mut ids = Vec::new();
    for i in 0..10 {
        let input = checkout_input(&format!("stale-{i}"), "stale-sku", 1, "tok_visa", "GB");
        ids.push(slow_checkout(&a, ("shipping", "any", 3000), &input).await);
    }
    let mut epochs = Vec::new();
    for id in &ids {
        let s = saga_reaches(&b, id, "step_started", "create_shipment").await;
        assert_eq!(s["lease"]["owner"], "orch-0", "{s}");
        epochs.push(s["lease"]["epoch"].as_i64().unwrap());
    }

    // Pause orch-0 past its lease: orch-1 takes every saga over and finishes it.
    let orch0 = cluster.orchestrator(0);
    cluster.proc(orch0).signal("STOP").unwrap();
    let mut finished = Vec::new();
    for (id, epoch) in ids.iter().zip(&epochs) {
        let s = b.settle(id, 60).await.unwrap();
        assert_eq!(s["status"], "completed", "{}", demo::timeline(&s));
        assert!(
            s["lease"]["epoch"].as_i64().unwrap() > *epoch,
            "the epoch moved: {s}"
        );
        let resent = s["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "step_started"
                && e["step"] == "create_shipment"
                && e["detail"]["resent"] == true
        });
        assert!(resent, "orch-1 re-sent the call: {}", demo::timeline(&s));
        finished.push(s["events"].as_array().unwrap().len());
    }

    // Resume orch-0: its in-flight calls return, and every write it tries is fenced.
    cluster.proc(orch0).signal("CONT").unwrap();
    let fenced = fenced_lines(&cluster, orch0, &ids).await;
    assert!(fenced >= ids.len());
    cluster.wait_healthy(orch0, Duration::from_secs(10)).await;
    for (id, n) in ids.iter().zip(&finished) {
        let s = saga(&a, id).await;
        assert_eq!(s["status"], "completed");
        assert_eq!(
            s["events"].as_array().unwrap().len(),
            *n,
            "the stale owner wrote nothing: {}",
            demo::timeline(&s)
        );
    }

    // One effect per step, from the services' own tables and APIs.
    let audit = cluster.audit().await;
    let v = audit.violations(&BTreeMap::from([("stale-sku".to_string(), 100)]));
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(audit.shipments.len(), 10);
    for i in 0..10 {
        let p = api_problems(&a, &format!("stale-{i}"), "completed").await;
        assert!(p.is_empty(), "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_every_process_reconnects_and_every_saga_finishes() {
    let Some(pg) = PgCluster::create() else {
        return PgCluster::missing();
    };
    let defs = std::env::temp_dir().join(format!(
        "tandem-pgrestart-defs-{}",
        uuid::Uuid::now_v7().simple()
    ));
    tandem_tests::write_chaos_definition(&defs, "checkout_chaos", 5000);
    let mut cfg = ClusterConfig::new("pgrestart", 1)
        .env("LEASE_TTL_MS", "2000")
        .env("POLL_INTERVAL_MS", "100")
        .env("DEFINITIONS_DIR", defs.display().to_string());
    cfg.server_url = pg.url();
    let mut cluster = Cluster::new(cfg);
    cluster.start_all();
    cluster.wait_all_healthy(Duration::from_secs(120)).await;
    let c = cluster.client(0);
    c.set_stock("pg-sku", 1000).await.unwrap();

    let start = |i: usize| {
        let c = c.clone();
        async move {
            let order = format!("pg-{i}");
            // Half of them are slow at payment, so they are in flight across the restart.
            if i.is_multiple_of(2) {
                c.add_fault(
                    "payment",
                    &json!({"order_id": order, "kind": "latency", "latency_ms": 800}),
                )
                .await
                .unwrap();
            }
            let input = checkout_input(&order, "pg-sku", 1, "tok_visa", "GB");
            eventually(Duration::from_secs(60), "POST /sagas", || {
                let (c, input) = (c.clone(), input.clone());
                async move {
                    let r = c.start_saga("checkout_chaos", &input, None).await.ok()?;
                    (r.status == 201 || r.status == 200).then_some(())
                }
            })
            .await;
        }
    };
    for i in 0..15 {
        start(i).await;
    }

    // Restart Postgres while sagas are in flight; every process notices the outage.
    pg.stop();
    cluster.wait_all_unhealthy(Duration::from_secs(30)).await;
    pg.start();
    cluster.wait_all_healthy(Duration::from_secs(60)).await;
    for i in 15..30 {
        start(i).await;
    }

    cluster.wait_settled(Duration::from_secs(120)).await;
    cluster.assert_all_running();
    let audit = cluster.audit().await;
    assert_eq!(audit.sagas.len(), 30);
    assert_eq!(
        audit.by_status(),
        BTreeMap::from([("completed".to_string(), 30)]),
        "logs in {}",
        cluster.log_dir.display()
    );
    let v = audit.violations(&BTreeMap::from([("pg-sku".to_string(), 1000)]));
    assert!(v.is_empty(), "{v:?}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&defs);
}
