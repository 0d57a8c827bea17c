//! `POST /transactions/{id}/resolve` (`tandem commit resolve`) with the real binaries: the 2PC
//! coordinator (orch-0) dies at `orchestrator.2pc.after_votes` with the three services
//! prepared, and its lease outlives the test, so nobody else would ever decide. An operator
//! asks another instance (orch-1): the heuristic decision is logged with who and why, logged
//! at WARN, and delivered; the services' own records show it. Bad input is refused with a
//! problem and stores nothing; another decision than the logged one is a 409.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_tests::cluster::{Cluster, ClusterConfig};

const HEALTHY: Duration = Duration::from_secs(60);
const CRASH: &str = "orchestrator.2pc.after_votes";

/// Start orch-0 with the crash point, begin a 2PC checkout of 2 × `sku` for `order`, wait for
/// the crash: the transaction's id (read from orch-1, which must be up).
async fn orphan(cluster: &mut Cluster, c: &Client, order: &str, sku: &str) -> String {
    let o0 = cluster.orchestrator(0);
    cluster.start(o0, Some(CRASH.into()));
    cluster.wait_healthy(o0, HEALTHY).await;
    let body = json!({
        "protocol": "2pc", "definition": "checkout",
        "input": checkout_input(order, sku, 2, "tok_visa", "GB"),
    });
    let url = format!("{}/transactions", cluster.url(o0));
    let _ = c.send_json(reqwest::Method::POST, &url, &body).await; // may be lost in the crash
    tandem_tests::eventually(HEALTHY, "the coordinator to crash", || {
        let exited = cluster.proc(o0).exited().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    assert!(cluster.proc(o0).aborted(), "{}", cluster.log(o0));
    let list = c
        .get(&format!("{}/transactions", c.orchestrator))
        .await
        .unwrap();
    let t = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["business_key"] == order)
        .unwrap_or_else(|| panic!("{order} not logged: {}", list.body))
        .clone();
    assert_eq!(
        (t["state"].as_str(), &t["decision"]),
        (Some("preparing"), &Value::Null),
        "{t}"
    );
    // The operator's first look: how long its locks have been held.
    assert!(
        t["holding_locks_ms"].as_i64().is_some_and(|ms| ms >= 0),
        "{t}"
    );
    t["id"].as_str().unwrap().to_string()
}

/// The JSON body of `GET {url}`.
async fn body(c: &Client, url: String) -> Value {
    c.get(&url).await.unwrap().body
}

async fn resolve(c: &Client, id: &str, body: &Value) -> (u16, Value) {
    let url = format!("{}/transactions/{id}/resolve", c.orchestrator);
    let r = c
        .send_json(reqwest::Method::POST, &url, body)
        .await
        .unwrap();
    (r.status, r.body)
}

async fn settled(c: &Client, id: &str) -> Value {
    tandem_tests::eventually(
        Duration::from_secs(30),
        "the transaction to settle",
        || async {
            let t = c
                .get(&format!("{}/transactions/{id}?wait=5", c.orchestrator))
                .await
                .ok()?;
            matches!(t.body["state"].as_str(), Some("committed" | "aborted")).then_some(t.body)
        },
    )
    .await
}

/// Bad requests to the resolve endpoint: each a 4xx problem; nothing recorded.
async fn bad_requests_store_nothing(c: &Client, id: &str) {
    let long = "x".repeat(1001);
    for bad in [
        json!({}),
        json!({"decision": "maybe"}),
        json!({"decision": "commit", "extra": 1}),
        json!({"decision": "commit", "reason": long}),
        json!({"decision": "commit", "operator": ""}),
        json!({"decision": "commit", "reason": "a\u{0}"}),
        json!(["commit"]),
    ] {
        let (s, b) = resolve(c, id, &bad).await;
        assert!((400..500).contains(&s), "{bad}: {s} {b}");
        assert!(
            b["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:tandem:problem:")),
            "{b}"
        );
    }
    let (s, _) = resolve(c, "not-a-uuid", &json!({"decision": "abort"})).await;
    assert!((400..500).contains(&s));
    let unknown = uuid::Uuid::now_v7().to_string();
    let (s, b) = resolve(c, &unknown, &json!({"decision": "abort"})).await;
    assert_eq!(s, 404, "{b}");
    let t = body(c, format!("{}/transactions/{id}", c.orchestrator)).await;
    assert_eq!(
        (&t["decision"], &t["heuristic"]),
        (&Value::Null, &Value::Null),
        "{t}"
    );
    assert_eq!(t["state"], "preparing", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resolves_transactions_whose_coordinator_is_gone() {
    // Leases of a minute: orch-1 never takes the orphans over by itself.
    let cfg = ClusterConfig::new("resolve", 2)
        .env("LEASE_TTL_MS", "60000")
        .env("POLL_INTERVAL_MS", "100");
    let mut cluster = Cluster::new(cfg);
    let o1 = cluster.orchestrator(1);
    for node in [0, 1, 2, o1] {
        cluster.start(node, None);
    }
    for node in [0, 1, 2, o1] {
        cluster.wait_healthy(node, HEALTHY).await;
    }
    let c = cluster.client(1);
    c.set_stock("rs-a", 10).await.unwrap();
    c.set_stock("rs-b", 10).await.unwrap();

    // 1. Resolve commit.
    let id = orphan(&mut cluster, &c, "rs-1", "rs-a").await;
    let status = body(&c, format!("{}/2pc/status", c.inventory)).await;
    assert!(
        status["oldest_prepared_age_ms"].as_i64().is_some(),
        "{status}"
    );
    bad_requests_store_nothing(&c, &id).await;
    let why = json!({"decision": "commit", "reason": "coordinator host lost", "operator": "ops-7"});
    let (s, t) = resolve(&c, &id, &why).await;
    assert_eq!(
        (s, &t["recorded"], t["decision"].as_str()),
        (200, &json!(true), Some("commit")),
        "{t}"
    );
    let h = &t["heuristic"]["detail"];
    assert_eq!(
        (h["operator"].as_str(), h["reason"].as_str()),
        (Some("ops-7"), Some("coordinator host lost")),
        "{t}"
    );
    assert_eq!(h["instance"], "orch-1", "{t}");
    assert!(t["heuristic"]["at"].is_string(), "{t}");
    // A conflicting decision is refused; the same one again records nothing more.
    let (s, b) = resolve(&c, &id, &json!({"decision": "abort"})).await;
    assert_eq!((s, b["decision"].as_str()), (409, Some("commit")), "{b}");
    let (s, again) = resolve(&c, &id, &why).await;
    assert_eq!((s, &again["recorded"]), (200, &json!(false)), "{again}");
    let done = settled(&c, &id).await;
    assert_eq!(done["state"], "committed", "{done}");
    let entries = done["messages"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|m| m["kind"] == "heuristic_decision")
            .count(),
        1,
        "{done}"
    );
    assert_eq!(c.stock("rs-a").await.unwrap()["available"], 8);
    assert_eq!(c.payments("rs-1").await.unwrap().len(), 1);
    assert_eq!(c.shipments("rs-1").await.unwrap().len(), 1);
    assert!(
        cluster.log(o1).contains("HEURISTIC DECISION"),
        "logged at WARN"
    );

    // 2. Resolve abort.
    let id = orphan(&mut cluster, &c, "rs-2", "rs-b").await;
    let (s, t) = resolve(&c, &id, &json!({"decision": "abort", "reason": "gone"})).await;
    assert_eq!((s, t["decision"].as_str()), (200, Some("abort")), "{t}");
    assert_eq!(t["heuristic"]["detail"]["operator"], "unknown", "{t}");
    let done = settled(&c, &id).await;
    assert_eq!(done["state"], "aborted", "{done}");
    let (s, b) = resolve(&c, &id, &json!({"decision": "commit"})).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(c.stock("rs-b").await.unwrap()["available"], 10);
    assert!(c.payments("rs-2").await.unwrap().is_empty());
    assert!(c.reservations("rs-2").await.unwrap().is_empty());
    for base in [&c.inventory, &c.payment, &c.shipping] {
        let status = body(&c, format!("{base}/2pc/status")).await;
        assert_eq!(status["prepared"], json!([]), "{base}: {status}");
    }
}
