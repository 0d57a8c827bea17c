//! The Paxos Commit participant (the kit's, run by inventory) against the real Postgres: a YES
//! vote is the branch prepared and a ballot-0 `Phase2a(Prepared)` to every acceptor; a NO vote a
//! `Phase2a(Aborted)`; the outcome commits the prepared branch; bad input is a problem and
//! stores nothing. Stand-in acceptors record what reaches them.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::testing::{Served, assert_problem, recorder};
use uuid::Uuid;

fn prepare_body(txn: Uuid, qty: i64, acceptors: &[String]) -> Value {
    json!({ "txn_id": txn, "step": 0, "action": "/reservations",
            "body": { "order_id": "px-1", "items": [{ "sku": "a", "quantity": qty }] },
            "leader_url": "http://127.0.0.1:9", "acceptors": acceptors, "n": 3 })
}

#[tokio::test]
async fn a_vote_goes_to_every_acceptor_and_the_outcome_commits_the_branch() {
    let svc = Served::start(&inventory::SPEC, |c| c.in_doubt_after_ms = 60_000).await;
    let _cleanup = svc.prepared_cleanup();
    if !svc.can_prepare().await {
        return;
    }
    let r = svc
        .http
        .put(format!("{}/stock/a", svc.url))
        .json(&json!({ "available": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (url, got) = recorder("/paxos/phase2a", json!({ "reply": null })).await;
    let acceptors = vec![url.clone(), url.clone(), url];

    // YES: prepared, and Phase2a(ballot 0, Prepared) for instance 0 to acceptors 0, 1, 2.
    let txn = Uuid::now_v7();
    let (s, b) = svc
        .post("/paxos/prepare", None, prepare_body(txn, 2, &acceptors))
        .await;
    assert_eq!(
        (s, &b["vote"], &b["acceptors_reached"]),
        (StatusCode::OK, &json!("yes"), &json!(3)),
        "{b}"
    );
    let mut seen: Vec<Value> = got.lock().unwrap().drain(..).collect();
    seen.sort_by_key(|m| m["acceptor"].as_u64());
    assert_eq!(seen.len(), 3);
    for (k, m) in seen.iter().enumerate() {
        assert_eq!(m["acceptor"], k, "{m}");
        assert_eq!(m["from"], json!({ "Participant": 0 }));
        assert_eq!(
            m["msg"],
            json!({ "Phase2a": { "ballot": { "epoch": 0, "round": 0 }, "values": [[0, "Prepared"]] } })
        );
    }
    let (_, status) = svc.get("/2pc/status").await;
    assert_eq!(status["prepared"][0]["txn_id"], json!(txn), "{status}");

    // The outcome commits it: the reservation is there, the stock down.
    let outcome = json!({ "txn_id": txn, "step": 0, "outcome": "Commit" });
    let (s, b) = svc.post("/paxos/outcome", None, outcome.clone()).await;
    assert_eq!(
        (s, &b["state"]),
        (StatusCode::OK, &json!("committed")),
        "{b}"
    );
    let (s, b) = svc.post("/paxos/outcome", None, outcome).await;
    assert_eq!(
        (s, &b["state"]),
        (StatusCode::OK, &json!("committed")),
        "a duplicate: {b}"
    );
    let (_, stock) = svc.get("/stock/a").await;
    assert_eq!(stock["available"], 3, "{stock}");

    // NO (not enough stock): Phase2a(Aborted), nothing held.
    let txn = Uuid::now_v7();
    let (_, b) = svc
        .post("/paxos/prepare", None, prepare_body(txn, 100, &acceptors))
        .await;
    assert_eq!(b["vote"], "no", "{b}");
    let seen: Vec<Value> = got.lock().unwrap().drain(..).collect();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|m| m["msg"]["Phase2a"]["values"] == json!([[0, "Aborted"]]))
    );
    let (_, status) = svc.get("/2pc/status").await;
    assert_eq!(status["prepared"], json!([]), "{status}");
}

#[tokio::test]
async fn bad_prepares_are_problems_and_store_nothing() {
    let svc = Served::start(&inventory::SPEC, |_| {}).await;
    let txn = Uuid::now_v7();
    let ok = vec!["http://127.0.0.1:9".to_string(); 3];
    let cases = [
        ("/acceptors", prepare_body(txn, 1, &ok[..2])),
        ("/n", {
            let mut b = prepare_body(txn, 1, &ok);
            b["n"] = json!(0);
            b
        }),
        ("/leader_url", {
            let mut b = prepare_body(txn, 1, &ok);
            b["leader_url"] = json!("not a url");
            b
        }),
    ];
    for (pointer, body) in cases {
        let (s, b) = svc.post("/paxos/prepare", None, body).await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        assert_eq!(b["errors"][0]["pointer"], pointer, "{b}");
    }
    let branches: i64 = sqlx::query_scalar("SELECT count(*) FROM tpc_branch")
        .fetch_one(&svc.app.postgres().unwrap().control)
        .await
        .unwrap();
    assert_eq!(branches, 0);
}
