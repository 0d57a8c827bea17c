//! End to end with the real binaries: `kill -9` the orchestrator in the middle of a saga,
//! restart it, and check through the services' own records that every step took effect once.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_cli::client::checkout_input;
use tandem_cli::demo;
use tandem_tests::cluster::{Cluster, ClusterConfig, api_problems};
use tandem_tests::{saga_reaches, slow_checkout};

const HEALTHY: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_saga_and_restart_finishes_with_one_effect_per_step() {
    // Two orchestrator identities on one database: orch-0 first, orch-1 after the first kill.
    let mut cluster = Cluster::new(ClusterConfig::new("crash", 2).quick_takeover());
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
    let input = checkout_input("crash-1", "crash-sku", 2, "tok_visa", "GB");
    let id1 = slow_checkout(&c, ("shipping", "any", 1500), &input).await;
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
    let input = checkout_input("crash-2", "crash-sku", 3, "tok_visa", "ZZ");
    let id2 = slow_checkout(&c, ("payment", "compensation", 1500), &input).await;
    saga_reaches(&c, &id2, "compensation_started", "charge_payment").await;
    cluster.start(o1, None); // kill -9, then the same identity again
    cluster.wait_healthy(o1, HEALTHY).await;
    let s2 = c.settle(&id2, 60).await.unwrap();
    assert_eq!(s2["status"], "compensated", "{}", demo::timeline(&s2));

    // The services' own records: one effect per step, stock conserved (8 left, 2 held).
    let audit = cluster.audit().await;
    let v = audit.violations(&BTreeMap::from([("crash-sku".to_string(), 10)]));
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(audit.stock["crash-sku"], (8, 2));
    for (order, status) in [("crash-1", "completed"), ("crash-2", "compensated")] {
        let p = api_problems(&c, order, status).await;
        assert!(p.is_empty(), "{p:?}");
    }
}
