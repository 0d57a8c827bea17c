//! End to end with the real binaries: `kill -9` the orchestrator in the middle of a saga,
//! restart it, and check through the services' own records that every step took effect once.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::cluster::{Cluster, ClusterConfig};
use tandem_tests::eventually;

const HEALTHY: Duration = Duration::from_secs(60);

async fn saga_reaches(c: &Client, id: &str, kind: &str, step: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{kind} {step}"),
        || async move {
            let s = c.wait_saga(id, 0).await.ok()?;
            demo::event_index(&s, kind, Some(step)).map(|_| ())
        },
    )
    .await
}

fn count(list: &[Value], key: &str, value: &str) -> usize {
    list.iter().filter(|p| p[key] == value).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_saga_and_restart_finishes_with_one_effect_per_step() {
    // Two orchestrator identities on one database: orch-0 first, orch-1 after the first kill.
    let mut cluster = Cluster::new(
        ClusterConfig::new("crash", 2)
            .env("LEASE_TTL_MS", "1500")
            .env("POLL_INTERVAL_MS", "100"),
    );
    let (o0, o1) = (cluster.orchestrator(0), cluster.orchestrator(1));
    for node in [0, 1, 2, o0] {
        cluster.start(node, None);
    }
    for node in [0, 1, 2, o0] {
        cluster.wait_healthy(node, HEALTHY).await;
    }
    let c = cluster.client(0);
    c.set_stock("crash-sku", 10).await.unwrap();

    // 1. Killed while the shipment call is in flight (the service is slow): another instance
    //    identity takes over once the lease expires, re-sends with the same key.
    c.add_fault(
        "shipping",
        &json!({"order_id": "crash-1", "kind": "latency", "latency_ms": 1500}),
    )
    .await
    .unwrap();
    let r = c
        .start_saga(
            "checkout",
            &checkout_input("crash-1", "crash-sku", 2, "tok_visa", "GB"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let id1 = r.body["id"].as_str().unwrap().to_string();
    saga_reaches(&c, &id1, "step_started", "create_shipment").await;
    cluster.kill9(o0);
    cluster.start(o1, None);
    cluster.wait_healthy(o1, HEALTHY).await;
    let c = cluster.client(1);
    let s1 = c.settle(&id1, 60).await.unwrap();
    assert_eq!(s1["status"], "completed", "{}", demo::timeline(&s1));
    assert!(
        s1["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["resent"] == true),
        "{}",
        demo::timeline(&s1)
    );

    // 2. Killed during compensation (the refund is slow): the same identity restarts and
    //    takes its leases back at once.
    c.add_fault("payment", &json!({"order_id": "crash-2", "op": "compensation", "kind": "latency", "latency_ms": 1500})).await.unwrap();
    let r = c
        .start_saga(
            "checkout",
            &checkout_input("crash-2", "crash-sku", 3, "tok_visa", "ZZ"),
            None,
        )
        .await
        .unwrap();
    let id2 = r.body["id"].as_str().unwrap().to_string();
    saga_reaches(&c, &id2, "compensation_started", "charge_payment").await;
    cluster.start(o1, None); // kill -9, then the same identity again
    cluster.wait_healthy(o1, HEALTHY).await;
    let s2 = c.settle(&id2, 60).await.unwrap();
    assert_eq!(s2["status"], "compensated", "{}", demo::timeline(&s2));

    // The services' own records: one effect per step.
    let res = c.reservations("crash-1").await.unwrap();
    assert_eq!(
        (res.len(), count(&res, "status", "held")),
        (1, 1),
        "{res:?}"
    );
    let pay = c.payments("crash-1").await.unwrap();
    assert_eq!(
        (count(&pay, "kind", "charge"), count(&pay, "kind", "refund")),
        (1, 0),
        "{pay:?}"
    );
    let ship = c.shipments("crash-1").await.unwrap();
    assert_eq!(
        (ship.len(), count(&ship, "status", "created")),
        (1, 1),
        "{ship:?}"
    );

    let res = c.reservations("crash-2").await.unwrap();
    assert_eq!(
        (res.len(), count(&res, "status", "released")),
        (1, 1),
        "{res:?}"
    );
    let pay = c.payments("crash-2").await.unwrap();
    assert_eq!(
        (count(&pay, "kind", "charge"), count(&pay, "kind", "refund")),
        (1, 1),
        "{pay:?}"
    );
    assert_eq!(
        count(&c.shipments("crash-2").await.unwrap(), "status", "created"),
        0
    );
    let stock = c.stock("crash-sku").await.unwrap();
    assert_eq!(
        (stock["available"].as_i64(), stock["reserved"].as_i64()),
        (Some(8), Some(2)),
        "{stock}"
    );
}
