//! Paxos Commit over the real services, with the real binaries: two orchestrators (the leader
//! lives with whichever holds the transaction's lease), inventory, payment and shipping as
//! participants, and three acceptors (F = 1), each process with its own database. The demo's
//! scenarios, in one run:
//!
//! 1. the leader crashes after the votes (a crash point, just before it decides): the other
//!    orchestrator takes the lease — a higher epoch, so a higher ballot — and commits;
//! 2. the same with one acceptor down as well: it still commits;
//! 3. two of three acceptors down: nothing is decided and no effect is visible anywhere (the
//!    participants hold their prepared transactions); when one acceptor returns, it commits.
//!
//! After each, every service's own records agree: all three effects or none, stock conserved,
//! nothing left prepared.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use tandem_cli::client::checkout_input;
use tandem_tests::cluster::{Cluster, ClusterConfig, SERVICES};
use tandem_tests::eventually;

const HEALTHY: Duration = Duration::from_secs(60);
const SKU: &str = "paxos-sku";

async fn get(url: String) -> Value {
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

/// `POST /transactions` (Paxos Commit checkout of one unit) to orchestrator node `o`: its id.
async fn begin(cluster: &Cluster, o: usize, order: &str, card: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{}/transactions", cluster.url(o)))
        .json(
            &json!({ "protocol": "paxos-commit", "definition": "checkout",
                       "input": checkout_input(order, SKU, 1, card, "FR") }),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["protocol"], "paxos-commit", "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The transaction once settled, read from orchestrator node `o`.
async fn settled(cluster: &Cluster, o: usize, id: &str) -> Value {
    let url = format!("{}/transactions/{id}?wait=30", cluster.url(o));
    eventually(Duration::from_secs(60), "the transaction to settle", || {
        let url = url.clone();
        async move {
            let t = get(url).await;
            (t["state"] == "committed" || t["state"] == "aborted").then_some(t)
        }
    })
    .await
}

/// The highest ballot a leader of `id` forced: (epoch, round).
async fn ballot(cluster: &Cluster, id: &str) -> (u64, u64) {
    let mut c = sqlx::PgConnection::connect(&cluster.db_url("orchestrator"))
        .await
        .unwrap();
    let b: Option<Value> =
        sqlx::query_scalar("SELECT paxos_ballot FROM transactions WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap();
    let b = b.unwrap_or(Value::Null);
    (
        b["epoch"].as_u64().unwrap_or(0),
        b["round"].as_u64().unwrap_or(0),
    )
}

/// Each service's own committed records of `order`: (reservations, payments, shipments).
async fn effects(cluster: &Cluster, order: &str) -> [usize; 3] {
    let paths = ["reservations", "payments", "shipments"];
    let mut out = [0; 3];
    for (i, path) in paths.iter().enumerate() {
        let list = get(format!("{}/{path}?order_id={order}", cluster.url(i))).await;
        out[i] = list.as_array().map_or(0, Vec::len);
    }
    out
}

/// Transactions each service holds prepared (their txn ids).
async fn prepared(cluster: &Cluster) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..SERVICES.len() {
        let s = get(format!("{}/2pc/status", cluster.url(i))).await;
        let ids = s["prepared"].as_array().cloned().unwrap_or_default();
        out.push(
            ids.iter()
                .map(|p| p["txn_id"].as_str().unwrap_or("").to_string())
                .collect(),
        );
    }
    out
}

async fn stock(cluster: &Cluster) -> i64 {
    get(format!("{}/stock/{SKU}", cluster.url(0))).await["available"]
        .as_i64()
        .unwrap()
}

/// Committed in all three services, once each, and nothing left prepared.
async fn committed_everywhere(cluster: &Cluster, t: &Value, order: &str) {
    assert_eq!(t["state"], "committed", "{t}");
    assert_eq!(effects(cluster, order).await, [1, 1, 1], "{order}");
    assert!(prepared(cluster).await.iter().all(Vec::is_empty));
}

/// Start orchestrator node `o` armed to crash just before its leader decides; wait for it.
async fn start_crashing_leader(cluster: &mut Cluster, o: usize) {
    cluster.start(o, Some("orchestrator.paxos.after_votes".into()));
    cluster.wait_healthy(o, HEALTHY).await;
}

async fn wait_crashed(cluster: &mut Cluster, o: usize) {
    for _ in 0..600 {
        if cluster.proc(o).exited().is_some() {
            assert!(cluster.log(o).contains("orchestrator.paxos.after_votes"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the leader did not reach its crash point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paxos_commit_survives_the_leader_and_f_acceptors_and_waits_for_a_majority() {
    let cfg = ClusterConfig::new("paxos", 2)
        .quick_takeover()
        .env("PAXOS_PROGRESS_MS", "300")
        .acceptors(3);
    let mut cluster = Cluster::new(cfg);
    let (o0, o1) = (cluster.orchestrator(0), cluster.orchestrator(1));
    let acceptors = [0, 1, 2].map(|k| cluster.acceptor(k));
    cluster.start_all();
    cluster.wait_all_healthy(HEALTHY).await;
    start_crashing_leader(&mut cluster, o0).await;
    let r = reqwest::Client::new()
        .put(format!("{}/stock/{SKU}", cluster.url(0)))
        .json(&json!({ "available": 10 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // 0. A NO vote (declined card) aborts: nothing anywhere.
    let t0 = settled(
        &cluster,
        o1,
        &begin(&cluster, o1, "px-0", "tok_decline").await,
    )
    .await;
    assert_eq!(t0["state"], "aborted", "{t0}");
    assert_eq!(effects(&cluster, "px-0").await, [0, 0, 0]);

    // 1. The leader (orch-0) crashes after the votes; orch-1 takes over with a higher ballot.
    let id1 = begin(&cluster, o0, "px-1", "tok_visa").await;
    wait_crashed(&mut cluster, o0).await;
    let t1 = settled(&cluster, o1, &id1).await;
    committed_everywhere(&cluster, &t1, "px-1").await;
    let (epoch, _) = ballot(&cluster, &id1).await;
    assert!(t1["lease"]["epoch"].as_u64() >= Some(2), "{t1}");
    assert_eq!(
        Some(epoch),
        t1["lease"]["epoch"].as_u64(),
        "the ballot is the lease's"
    );

    // 2. One acceptor down as well: F + 1 = 2 acceptors still choose.
    cluster.kill9(acceptors[2]);
    start_crashing_leader(&mut cluster, o0).await;
    let id2 = begin(&cluster, o0, "px-2", "tok_visa").await;
    wait_crashed(&mut cluster, o0).await;
    let t2 = settled(&cluster, o1, &id2).await;
    committed_everywhere(&cluster, &t2, "px-2").await;
    assert!(ballot(&cluster, &id2).await.0 >= 2);

    // 3. Two of three acceptors down: it waits — undecided, every participant prepared, no
    //    effect visible anywhere — through many ballots; one acceptor back, and it commits.
    cluster.kill9(acceptors[1]);
    let id3 = begin(&cluster, o1, "px-3", "tok_visa").await;
    let waited = eventually(
        Duration::from_secs(30),
        "every participant to prepare",
        || {
            let cluster = &cluster;
            let id3 = id3.clone();
            async move {
                let p = prepared(cluster).await;
                p.iter().all(|ids| ids.contains(&id3)).then_some(())
            }
        },
    );
    waited.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t3 = get(format!("{}/transactions/{id3}", cluster.url(o1))).await;
    assert_eq!(t3["state"], "preparing", "{t3}");
    assert_eq!(t3["decision"], Value::Null, "{t3}");
    assert!(
        ballot(&cluster, &id3).await.1 >= 2,
        "the leader kept trying"
    );
    assert_eq!(effects(&cluster, "px-3").await, [0, 0, 0]);
    let decision = reqwest::get(format!("{}/transactions/{id3}/decision", cluster.url(o1)))
        .await
        .unwrap();
    assert_eq!(decision.status(), 503, "no presumed abort for Paxos Commit");
    cluster.start(acceptors[1], None);
    let t3 = settled(&cluster, o1, &id3).await;
    committed_everywhere(&cluster, &t3, "px-3").await;

    // Stock: 10, minus one unit for each committed checkout.
    assert_eq!(stock(&cluster).await, 7);
    assert_eq!(effects(&cluster, "px-0").await, [0, 0, 0]);
}
