//! The 2PC coordinator against small in-test participants that follow the HTTP contract
//! (docs/commit-protocols.md, "over the services"): `POST /2pc/prepare|commit|abort`,
//! `GET /2pc/status`. They record every message, so atomicity is checked on what each
//! participant was told. (The real services' participant endpoints are tested in their crates
//! and end to end once merged.)

mod common;

use common::assert_decided;
use common::participants::{order_definition, setup};
use serde_json::{Value, json};
use tandem_kit::testing::strings;

fn begin(order: &str) -> Value {
    json!({"protocol": "2pc", "definition": "order", "input": {"order_id": order}})
}

/// The same order as a saga.
fn saga(order: &str) -> Value {
    json!({"definition": "order", "input": {"order_id": order}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_yes_commits_everywhere_with_a_logged_decision() {
    let (o, f) = setup("tpc_commit").await;
    let (s, t) = o.post("/transactions?wait=10", &begin("o-1")).await;
    assert_eq!(s, 201, "{t}");
    assert_decided(&t, "commit");
    for p in t["participants"].as_array().unwrap() {
        assert_eq!(
            (p["vote"].as_str(), p["state"].as_str()),
            (Some("yes"), Some("committed")),
            "{p}"
        );
        assert!(p["lock_hold_ms"].as_i64().unwrap() >= 0, "{p}");
        assert_eq!(p["holding_locks"], false);
    }
    let kinds = strings(&t["messages"], "kind");
    assert_eq!(
        t["counts"],
        json!({"messages": 12, "coordinator_forced_writes": 2}),
        "per participant: Prepare, vote, COMMIT, ack (a request and its response are two)"
    );
    for (kind, n) in [("prepare", 3), ("vote", 3), ("commit", 3), ("ack", 3)] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            n,
            "{kind} in {kinds:?}"
        );
    }
    {
        let log = f.log.lock().unwrap();
        assert_eq!((log.prepares, log.commits, log.aborts), (3, 3, 0));
        assert!(
            log.coordinator_urls.iter().all(|u| *u == o.url),
            "{:?}",
            log.coordinator_urls
        );
    }
    // The list, and the decision a participant would ask for.
    let (s, l) = o.get("/transactions?state=committed").await;
    assert_eq!(s, 200);
    assert_eq!(l["items"][0]["id"], t["id"]);
    let (s, d) = o
        .get(&format!(
            "/transactions/{}/decision",
            t["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!((s.as_u16(), d["decision"].as_str()), (200, Some("commit")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_no_vote_aborts_everyone() {
    let (o, f) = setup("tpc_no").await;
    f.no.lock().unwrap().push(1);
    let (s, t) = o.post("/transactions?wait=10", &begin("o-2")).await;
    assert_eq!(s, 201, "{t}");
    assert_decided(&t, "abort");
    assert_eq!(t["participants"][1]["vote"], "no");
    let log = f.log.lock().unwrap();
    assert_eq!(log.commits, 0, "no participant committed");
    assert!(
        log.state.values().all(|s| s == "aborted"),
        "{:?}",
        log.state
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_store_nothing() {
    let (o, _f) = setup("tpc_bad").await;
    let mut reads = order_definition();
    reads["name"] = json!("reads");
    reads["steps"][1]["action"]["body"]["ref"] = json!({"$from": "/steps/reserve/id"});
    let (s, b) = o.post("/definitions", &reads).await;
    assert_eq!(s, 201, "{b}");
    let cases = [
        (
            json!({"protocol": "4pc", "definition": "order", "input": {"order_id": "x"}}),
            "/protocol",
        ),
        (
            json!({"protocol": "2pc", "definition": "nope", "input": {}}),
            "/definition",
        ),
        (
            json!({"protocol": "2pc", "definition": "order", "input": {"order_id": "a\u{0}"}}),
            "/input/order_id",
        ),
        // A step body that reads another step's output: every Prepare goes out in one round,
        // so that is refused, naming the pointer.
        (
            json!({"protocol": "2pc", "definition": "reads", "input": {"order_id": "x"}}),
            "/steps/1/action/body/ref",
        ),
    ];
    for (body, pointer) in cases {
        let (s, b) = o.post("/transactions", &body).await;
        assert_eq!(s, 422, "{body}: {b}");
        assert!(
            b["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["pointer"] == pointer),
            "{pointer} not named: {b}"
        );
    }
    let (s, b) = o
        .post("/transactions", &json!({"definition": "order"}))
        .await;
    assert!(s.is_client_error(), "{b}");
    assert_eq!(o.count("transactions").await, 0);
    assert_eq!(o.count("transaction_messages").await, 0);
    let (s, _) = o.get("/transactions/not-a-uuid").await;
    assert!(s.is_client_error());
    let (s, _) = o
        .get(&format!("/transactions/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(s, 404);
    // Never logged: presumed abort.
    let (s, d) = o
        .get(&format!("/transactions/{}/decision", uuid::Uuid::now_v7()))
        .await;
    assert_eq!((s.as_u16(), d["decision"].as_str()), (200, Some("abort")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_and_transactions_share_one_business_key_namespace() {
    let (o, _f) = setup("tpc_bk").await;
    let (s, t) = o.post("/transactions?wait=10", &begin("o-3")).await;
    assert_eq!(s, 201, "{t}");
    let (s, b) = o.post("/sagas", &saga("o-3")).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["transaction_id"], t["id"]);
    let (s, saga) = o.post("/sagas", &saga("o-4")).await;
    assert_eq!(s, 201, "{saga}");
    let (s, b) = o.post("/transactions", &begin("o-4")).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["saga_id"], saga["id"]);
    // The same transaction again is that transaction.
    let (s, again) = o.post("/transactions", &begin("o-3")).await;
    assert_eq!((s.as_u16(), &again["id"]), (200, &t["id"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_transaction() {
    let (o, _f) = setup("tpc_key").await;
    let post = |body: Value| {
        o.http
            .post(format!("{}/transactions", o.url))
            .header("Idempotency-Key", "k-1")
            .json(&body)
            .send()
    };
    let first: Value = post(begin("o-5")).await.unwrap().json().await.unwrap();
    let r = post(begin("o-5")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], first["id"]);
    let r = post(begin("o-6")).await.unwrap();
    assert_eq!(r.status(), 422);
}

/// The rule that prevents a split: while the owner collects votes, a participant asks another
/// instance. That instance takes the lease first (fencing the owner), logs Abort, answers
/// abort — and the owner, once the last YES arrives, cannot log Commit any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_to_another_instance_while_votes_are_collected_never_splits() {
    let (o, f) = setup("tpc_split").await;
    let url = f.url.lock().unwrap().clone();
    let other = common::start_on(o.database_url.clone(), &url, |_| {}).await;
    *f.held_step.lock().unwrap() = Some(2);
    let (s, t) = o.post("/transactions", &begin("o-7")).await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    // The owner itself does not answer while it collects votes.
    let (s, b) = o.get(&format!("/transactions/{id}/decision")).await;
    assert_eq!(s, 503, "{b}");
    // Another instance: takes over, logs abort, then answers.
    let (s, d) = other.get(&format!("/transactions/{id}/decision")).await;
    assert_eq!(
        (s.as_u16(), d["decision"].as_str()),
        (200, Some("abort")),
        "{d}"
    );
    let logged: Option<String> =
        sqlx::query_scalar("SELECT decision FROM transactions WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(
        logged.as_deref(),
        Some("abort"),
        "durable before the answer"
    );
    // Now the last participant votes YES to the (fenced) owner.
    common::participants::release_and_expect_abort(&other, &f, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_cannot_prepare_is_named_at_once_and_nothing_is_stored() {
    let (o, f) = setup("tpc_cannot").await;
    f.cannot_prepare
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, b) = o.post("/transactions", &begin("o-9")).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(
        b["type"],
        "urn:tandem:problem:prepared-transactions-disabled"
    );
    assert_eq!(b["setting"], "max_prepared_transactions");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("max_prepared_transactions = 0"),
        "{b}"
    );
    assert_eq!(o.count("transactions").await, 0);
    assert_eq!(f.log.lock().unwrap().prepares, 0);
}

/// The namespace holds under concurrency: a saga and a transaction created at the same moment
/// for one business key never both exist (they serialise on the shared key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saga_and_transaction_for_one_key_one_wins() {
    let (o, _f) = setup("tpc_race").await;
    for i in 0..15 {
        let order = format!("race-{i}");
        let saga = saga(&order);
        let txn = begin(&order);
        let (s1, s2) = tokio::join!(o.post("/sagas", &saga), o.post("/transactions", &txn));
        let created = [s1.0.as_u16(), s2.0.as_u16()];
        assert!(
            created == [201, 409] || created == [409, 201],
            "{order}: exactly one wins: {created:?} {} {}",
            s1.1,
            s2.1
        );
    }
    let both: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas s JOIN transactions t USING (definition, business_key)",
    )
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert_eq!(both, 0);
}
