//! The 2PC participant (the kit's, run by inventory) against the real Postgres, which has
//! prepared transactions enabled: prepare / commit, prepare / abort, a NO vote, duplicate, late
//! and reordered messages, the row lock held while prepared, recovery at start-up, bad input.
//! Every test rolls back its database's prepared transactions when it ends, pass or fail.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::service_tests::PreparedCleanup;
use tandem_kit::testing::{Served, assert_problem};
use uuid::Uuid;

/// No coordinator listens here: these tests send the outcome themselves.
const NO_COORDINATOR: &str = "http://127.0.0.1:9";

async fn spawn() -> Option<(Served, PreparedCleanup)> {
    spawn_with_lock_timeout(2000).await
}

/// The service, or `None` (skip) when this Postgres cannot prepare transactions (outside CI).
async fn spawn_with_lock_timeout(ms: u64) -> Option<(Served, PreparedCleanup)> {
    let svc = Served::start(&inventory::SPEC, |c| {
        c.lock_timeout_ms = ms;
        // These tests answer for the coordinator; the resolver stays out of their way.
        c.in_doubt_after_ms = 60_000;
    })
    .await;
    let cleanup = svc.prepared_cleanup();
    svc.can_prepare().await.then_some((svc, cleanup))
}

/// [`spawn`] with `available` units of SKU `a`.
async fn spawn_with_a(available: i64) -> Option<(Served, PreparedCleanup)> {
    let (svc, cleanup) = spawn().await?;
    set_stock(&svc, "a", available).await;
    Some((svc, cleanup))
}

async fn set_stock(svc: &Served, sku: &str, available: i64) {
    let url = format!("{}/stock/{sku}", svc.url);
    let resp = svc
        .http
        .put(url)
        .json(&json!({ "available": available }))
        .send()
        .await;
    assert_eq!(resp.unwrap().status(), StatusCode::OK);
}

async fn stock(svc: &Served, sku: &str) -> (i64, i64) {
    let (s, b) = svc.get(&format!("/stock/{sku}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    (
        b["available"].as_i64().unwrap(),
        b["reserved"].as_i64().unwrap(),
    )
}

async fn prepare(svc: &Served, txn: Uuid, order: &str, sku: &str, qty: i64) -> (StatusCode, Value) {
    prepare_at(svc, NO_COORDINATOR, txn, order, sku, qty).await
}

async fn prepare_at(
    svc: &Served,
    coordinator: &str,
    txn: Uuid,
    order: &str,
    sku: &str,
    qty: i64,
) -> (StatusCode, Value) {
    let body = json!({ "order_id": order, "items": [{ "sku": sku, "quantity": qty }] });
    svc.tpc_prepare(coordinator, txn, "/reservations", body)
        .await
}

async fn decide(svc: &Served, verb: &str, txn: Uuid) -> (StatusCode, Value) {
    svc.tpc_decide(verb, txn).await
}

/// An answer that is 200 with `field` equal to `want`: its body.
#[track_caller]
fn ok_with(answer: (StatusCode, Value), field: &str, want: &str) -> Value {
    let (s, b) = answer;
    assert_eq!((s, &b[field]), (StatusCode::OK, &json!(want)), "{b}");
    b
}

/// After `txn` (order `o-1`, 2 of `a`) was decided `verb` and reached `state`: a duplicate
/// decision answers `state` again, a late prepare votes `late_vote`, and the other decision is a
/// 409 `already-{state}`.
async fn assert_late_messages_agree(
    svc: &Served,
    txn: Uuid,
    (verb, state): (&str, &str),
    late_vote: &str,
) {
    ok_with(decide(svc, verb, txn).await, "state", state);
    ok_with(prepare(svc, txn, "o-1", "a", 2).await, "vote", late_vote);
    let other = if verb == "commit" { "abort" } else { "commit" };
    let (s, b) = decide(svc, other, txn).await;
    assert_problem(s, &b, StatusCode::CONFLICT, &format!("already-{state}"));
}

async fn prepared_gids(svc: &Served) -> Vec<String> {
    let (s, status) = svc.get("/2pc/status").await;
    assert_eq!(s, StatusCode::OK, "{status}");
    assert_eq!(status["can_prepare"], true, "{status}");
    let list = status["prepared"].as_array().unwrap();
    list.iter()
        .map(|p| p["gid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn prepare_then_commit_makes_the_effect_visible_with_its_transaction_id() {
    let Some((svc, _cleanup)) = spawn_with_a(10).await else {
        return;
    };
    let txn = Uuid::now_v7();
    let vote = ok_with(prepare(&svc, txn, "o-1", "a", 2).await, "vote", "yes");
    assert_eq!(stock(&svc, "a").await, (10, 0), "invisible while prepared");
    assert_eq!(prepared_gids(&svc).await, [format!("tandem:{txn}:0")]);
    // A duplicate prepare: the same vote, no second effect.
    let (_, again) = prepare(&svc, txn, "o-1", "a", 2).await;
    assert_eq!(again, vote);

    ok_with(decide(&svc, "commit", txn).await, "state", "committed");
    assert_eq!(stock(&svc, "a").await, (8, 2));
    assert!(prepared_gids(&svc).await.is_empty());
    let list = svc.list("/reservations", "o-1").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["txn_id"], json!(txn));

    // Duplicates and late messages after the commit.
    assert_late_messages_agree(&svc, txn, ("commit", "committed"), "yes").await;
    assert_eq!(stock(&svc, "a").await, (8, 2));
}

#[tokio::test]
async fn prepare_then_abort_leaves_nothing_and_later_messages_agree() {
    let Some((svc, _cleanup)) = spawn_with_a(10).await else {
        return;
    };
    let txn = Uuid::now_v7();
    ok_with(prepare(&svc, txn, "o-1", "a", 2).await, "vote", "yes");
    ok_with(decide(&svc, "abort", txn).await, "state", "aborted");
    assert_eq!(stock(&svc, "a").await, (10, 0));
    assert!(svc.list("/reservations", "o-1").await.is_empty());
    assert!(prepared_gids(&svc).await.is_empty());
    // Duplicate abort, prepare after abort, commit after abort.
    assert_late_messages_agree(&svc, txn, ("abort", "aborted"), "no").await;
    assert_eq!(stock(&svc, "a").await, (10, 0));
}

#[tokio::test]
async fn a_business_refusal_votes_no_with_its_reason_and_prepares_nothing() {
    let Some((svc, _cleanup)) = spawn_with_a(1).await else {
        return;
    };
    let txn = Uuid::now_v7();
    let vote = ok_with(prepare(&svc, txn, "o-1", "a", 2).await, "vote", "no");
    assert_eq!(
        vote["reason"]["type"],
        "urn:tandem:problem:insufficient-stock"
    );
    assert!(prepared_gids(&svc).await.is_empty());
    let (_, again) = prepare(&svc, txn, "o-1", "a", 2).await;
    assert_eq!(again, vote, "a duplicate gets the same vote");
    ok_with(decide(&svc, "abort", txn).await, "state", "aborted");
    assert_eq!(stock(&svc, "a").await, (1, 0));
}

#[tokio::test]
async fn an_abort_before_its_prepare_makes_the_late_prepare_vote_no() {
    let Some((svc, _cleanup)) = spawn_with_a(10).await else {
        return;
    };
    let txn = Uuid::now_v7();
    ok_with(decide(&svc, "abort", txn).await, "state", "aborted");
    ok_with(prepare(&svc, txn, "o-1", "a", 2).await, "vote", "no");
    assert_eq!(stock(&svc, "a").await, (10, 0));
    assert!(prepared_gids(&svc).await.is_empty());
    let (s, b) = decide(&svc, "commit", Uuid::now_v7()).await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "unknown-transaction");
}

/// A prepared reservation holds its stock row lock: a saga reservation of the same SKU waits
/// (visible in the status, blocked by the gid) until `lock_timeout`, then answers 503 with
/// `Retry-After`; once the transaction commits, the retry goes through.
#[tokio::test]
async fn the_row_lock_is_held_while_prepared() {
    let Some((svc, _cleanup)) = spawn_with_lock_timeout(3000).await else {
        return;
    };
    set_stock(&svc, "a", 10).await;
    let txn = Uuid::now_v7();
    ok_with(prepare(&svc, txn, "o-1", "a", 2).await, "vote", "yes");
    let saga = json!({ "order_id": "o-2", "items": [{"sku": "a", "quantity": 1}] });
    let waiter = svc.post("/reservations", Some("s2:reserve:action"), saga.clone());
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, status) = svc.get("/2pc/status").await;
            if let Some(w) = status["lock_waits"].as_array().and_then(|w| w.first()) {
                return w.clone();
            }
            assert!(Instant::now() < deadline, "no lock wait seen: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((s, b), wait) = tokio::join!(waiter, watch);
    assert_eq!(wait["blocked_by_gid"], format!("tandem:{txn}:0"), "{wait}");
    assert_problem(s, &b, StatusCode::SERVICE_UNAVAILABLE, "lock-timeout");
    // A second prepare of the same SKU waits and gives up the same way.
    let (s, b) = prepare(&svc, Uuid::now_v7(), "o-3", "a", 1).await;
    assert_problem(s, &b, StatusCode::SERVICE_UNAVAILABLE, "lock-timeout");

    let (s, _) = decide(&svc, "commit", txn).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = svc
        .post("/reservations", Some("s2:reserve:action"), saga)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(stock(&svc, "a").await, (7, 3));
}

#[tokio::test]
async fn bad_input_is_a_problem_and_stores_nothing() {
    let Some((svc, _cleanup)) = spawn().await else {
        return;
    };
    let good = json!({
        "txn_id": Uuid::now_v7(), "step": 0, "action": "/reservations",
        "coordinator_url": NO_COORDINATOR,
        "body": { "order_id": "o-1", "items": [{ "sku": "a", "quantity": 1 }] },
    });
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases = [
        (mutate(&|b| b["action"] = json!("/charges")), "/action"),
        (mutate(&|b| b["body"]["items"] = json!([])), "/body/items"),
        (
            mutate(&|b| b["body"]["order_id"] = json!("o\u{0}")),
            "/body/order_id",
        ),
        (
            mutate(&|b| b["coordinator_url"] = json!("ftp://x")),
            "/coordinator_url",
        ),
        (mutate(&|b| b["txn_id"] = json!("nope")), "/txn_id"),
        (mutate(&|b| b["step"] = json!(70000)), "/step"),
        (mutate(&|b| b["extra"] = json!(1)), ""),
    ];
    for (body, pointer) in cases {
        let (s, b) = svc.post("/2pc/prepare", None, body.clone()).await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        if !pointer.is_empty() {
            assert_eq!(b["errors"][0]["pointer"], pointer, "{body} → {b}");
            // The detail names the field where the client sent it, as the pointer does.
            let detail = b["detail"].as_str().unwrap_or_default();
            assert!(detail.starts_with(&format!("{pointer}:")), "{b}");
        }
    }
    let (s, b) = svc
        .post("/2pc/commit", None, json!({ "txn_id": Uuid::now_v7() }))
        .await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    assert_eq!(svc.counts(["tpc_branch", "reservations"]).await, [0, 0]);
}

/// A restarted service finishes its prepared branches with the coordinator's answers (a stub
/// here: commit for one transaction, abort for the other), and aborts a branch a crash left
/// `preparing` (no prepared transaction: its work was lost).
#[tokio::test]
async fn a_restarted_service_recovers_its_branches() {
    let Some((svc, _cleanup)) = spawn_with_a(10).await else {
        return;
    };
    set_stock(&svc, "b", 10).await;
    let (commit_txn, abort_txn, lost_txn) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let coordinator = stub_coordinator(commit_txn).await;
    // Two SKUs: two prepared reservations of one SKU would wait on each other's row lock.
    for (txn, order, sku) in [(commit_txn, "o-c", "a"), (abort_txn, "o-a", "b")] {
        let (_, vote) = prepare_at(&svc, &coordinator, txn, order, sku, 2).await;
        assert_eq!(vote["vote"], "yes", "{vote}");
    }
    sqlx::query(
        "INSERT INTO tpc_branch (txn_id, step, action, coordinator_url, state)
         VALUES ($1, 0, '/reservations', $2, 'preparing')",
    )
    .bind(lost_txn)
    .bind(&coordinator)
    .execute(&svc.app.postgres().unwrap().control)
    .await
    .unwrap();

    // "Restart": a second process of the service on the same database.
    let url = svc.database.first_url();
    let app = inventory::build(inventory::Config::with_database(url))
        .await
        .unwrap();
    let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    tokio::spawn(app.run(listener, std::future::pending()));

    let deadline = Instant::now() + Duration::from_secs(20);
    while !prepared_gids(&svc).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "still prepared: {:?}",
            prepared_gids(&svc).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stock(&svc, "a").await, (8, 2));
    assert_eq!(stock(&svc, "b").await, (10, 0));
    assert_eq!(svc.list("/reservations", "o-c").await.len(), 1);
    assert!(svc.list("/reservations", "o-a").await.is_empty());
    let (s, b) = decide(&svc, "commit", lost_txn).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "already-aborted");
}

/// A branch a crash left `preparing` whose row is still locked when the service restarts (the
/// killed process's Postgres session had not ended yet: seen under `kill -9` chaos, where it
/// made start-up fail): the service starts anyway, and aborts the branch once the lock is gone.
#[tokio::test]
async fn a_lost_prepare_still_locked_at_restart_is_aborted_once_released() {
    let Some((svc, _cleanup)) = spawn_with_a(10).await else {
        return;
    };
    let lost_txn = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tpc_branch (txn_id, step, action, coordinator_url, state)
         VALUES ($1, 0, '/reservations', $2, 'preparing')",
    )
    .bind(lost_txn)
    .bind(NO_COORDINATOR)
    .execute(&svc.app.postgres().unwrap().control)
    .await
    .unwrap();
    // The dead process's session, still holding the row as its prepare did.
    let mut zombie = svc.app.postgres().unwrap().control.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tpc_branch WHERE txn_id = $1 FOR UPDATE")
        .bind(lost_txn)
        .execute(&mut *zombie)
        .await
        .unwrap();

    let mut config = inventory::Config::with_database(svc.database.first_url());
    config.in_doubt_after_ms = 100;
    let app = inventory::build(config)
        .await
        .expect("a locked lost branch does not stop the start");
    let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    tokio::spawn(app.run(listener, std::future::pending()));
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM tpc_branch WHERE txn_id = $1")
            .bind(lost_txn)
            .fetch_one(&svc.app.postgres().unwrap().control)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state().await,
        "preparing",
        "not aborted while a session holds it"
    );

    zombie.rollback().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while state().await != "aborted" {
        assert!(
            Instant::now() < deadline,
            "the lost branch is never aborted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, b) = decide(&svc, "commit", lost_txn).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "already-aborted");
}

/// A coordinator that answers `commit` for `commit_txn` and `abort` for anything else.
async fn stub_coordinator(commit_txn: Uuid) -> String {
    use axum::extract::Path;
    let decide = move |Path(txn): Path<Uuid>| async move {
        let decision = if txn == commit_txn { "commit" } else { "abort" };
        axum::Json(json!({ "decision": decision }))
    };
    let router =
        axum::Router::new().route("/transactions/{txn}/decision", axum::routing::get(decide));
    let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Concurrent duplicates: of five identical prepares one runs the effect and each answers YES
/// or, while that one is still running, 503 (resend); of five concurrent commits each answers
/// committed or, while another session is committing it, 503 (resend); the effect happens once.
#[tokio::test]
async fn concurrent_duplicate_prepares_and_commits_make_one_effect() {
    let Some((svc, _cleanup)) = spawn_with_a(10).await else {
        return;
    };
    let txn = Uuid::now_v7();
    let busy =
        |s: StatusCode, b: &Value| s == StatusCode::SERVICE_UNAVAILABLE && b["status"] == 503;
    let votes = futures::future::join_all((0..5).map(|_| prepare(&svc, txn, "o-1", "a", 2))).await;
    for (s, b) in &votes {
        assert!(
            busy(*s, b) || (*s == StatusCode::OK && b["vote"] == "yes"),
            "{s} {b}"
        );
    }
    assert!(votes.iter().any(|(s, _)| *s == StatusCode::OK), "{votes:?}");
    let commits = futures::future::join_all((0..5).map(|_| decide(&svc, "commit", txn))).await;
    for (s, b) in &commits {
        assert!(
            busy(*s, b) || (*s == StatusCode::OK && b["state"] == "committed"),
            "{s} {b}"
        );
    }
    ok_with(decide(&svc, "commit", txn).await, "state", "committed");
    assert_eq!(stock(&svc, "a").await, (8, 2));
    assert_eq!(svc.list("/reservations", "o-1").await.len(), 1);
}

/// Concurrent commits of one prepared branch, many times over: each answers `committed` or a
/// 503 to resend, never `already-aborted`. (A `seen` read that straddled another request's
/// `COMMIT PREPARED` once saw the branch as neither prepared nor committed, and the duplicate
/// commit refused as if the branch had aborted: see `branch::seen`.) A race test: it can only
/// fail when the window is hit, which the repetitions make likely when the bug is back.
#[tokio::test]
async fn concurrent_commits_never_see_a_committed_branch_as_aborted() {
    const TXNS: usize = 25;
    let Some((svc, _cleanup)) = spawn_with_a(TXNS as i64).await else {
        return;
    };
    let busy =
        |s: StatusCode, b: &Value| s == StatusCode::SERVICE_UNAVAILABLE && b["status"] == 503;
    for i in 0..TXNS {
        let txn = Uuid::now_v7();
        let order = format!("o-{i}");
        ok_with(prepare(&svc, txn, &order, "a", 1).await, "vote", "yes");
        let commits = futures::future::join_all((0..6).map(|_| decide(&svc, "commit", txn))).await;
        for (s, b) in &commits {
            assert!(
                busy(*s, b) || (*s == StatusCode::OK && b["state"] == "committed"),
                "transaction {i}: {s} {b}"
            );
        }
        ok_with(decide(&svc, "commit", txn).await, "state", "committed");
    }
    assert_eq!(stock(&svc, "a").await, (0, TXNS as i64));
}

/// When `PREPARE TRANSACTION` itself fails (a full prepared-transaction table, or — the case
/// this test can make — a gid already in use on another database of the server), the forced
/// write did not happen: the branch votes NO with a `cannot-prepare` reason, its work is rolled
/// back, and nothing stays prepared.
#[tokio::test]
async fn a_failed_prepare_transaction_votes_no() {
    let Some((first, _cleanup_first)) = spawn().await else {
        return;
    };
    let (second, _cleanup_second) = spawn().await.unwrap();
    set_stock(&first, "a", 10).await;
    set_stock(&second, "a", 10).await;
    let txn = Uuid::now_v7();
    ok_with(prepare(&first, txn, "o-1", "a", 2).await, "vote", "yes");
    let vote = ok_with(prepare(&second, txn, "o-1", "a", 2).await, "vote", "no");
    assert_eq!(vote["reason"]["type"], "urn:tandem:problem:cannot-prepare");
    assert!(prepared_gids(&second).await.is_empty());
    assert_eq!(stock(&second, "a").await, (10, 0));
    let (_, again) = prepare(&second, txn, "o-1", "a", 2).await;
    assert_eq!(again, vote, "a duplicate gets the same vote");
    let (s, _) = decide(&first, "abort", txn).await;
    assert_eq!(s, StatusCode::OK);
}

/// 3PC over this service: a Begin whose local prepare waits past `lock_timeout` (the SKU's row
/// is held by a prepared 2PC transaction) votes NO and aborts the branch at once. It used to
/// answer 503 and leave the branch `working`, waiting for a resend that a coordinator which died
/// meanwhile never makes (found by tests/tests/three_pc_random.rs).
#[tokio::test]
async fn a_3pc_begin_that_waits_past_lock_timeout_votes_no_and_aborts_its_branch() {
    let Some((svc, _cleanup)) = spawn_with_lock_timeout(300).await else {
        return;
    };
    set_stock(&svc, "a", 10).await;
    let holder = Uuid::now_v7();
    ok_with(prepare(&svc, holder, "o-1", "a", 2).await, "vote", "yes");

    let txn = Uuid::now_v7();
    let begin = json!({
        "txn_id": txn, "to": 0, "n": 3, "from": { "Coordinator": 0 }, "msg": null,
        "setup": {
            "action": "/reservations",
            "body": { "order_id": "o-2", "items": [{ "sku": "a", "quantity": 1 }] },
            "coordinator_url": NO_COORDINATOR,
            "peers": [svc.url, NO_COORDINATOR, NO_COORDINATOR],
            "timeout_ms": 60_000
        }
    });
    let (s, b) = svc.post("/3pc/msg", None, begin).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "Aborted", "{b}");
    assert_eq!(
        b["reason"]["type"], "lock-timeout",
        "the lock wait is the reason: {b}"
    );
    let (s, view) = svc.get(&format!("/3pc/{txn}")).await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["branches"][0]["state"], "aborted", "{view}");
    assert_eq!(view["branches"][0]["prepared"], false, "{view}");

    // The holder is untouched and still commits; the aborted branch reserved nothing.
    let (s, _) = decide(&svc, "commit", holder).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(stock(&svc, "a").await, (8, 2));
}
