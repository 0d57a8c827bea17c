//! The acceptor over HTTP on a real Postgres: it answers what its core answers, keeps its
//! promises and accepted values across a restart (the state is committed before the answer),
//! sends the ballot-0 bundle to the leader, and refuses bad input with a problem, storing nothing.

use acceptor::{App, Config};
use serde_json::{Value, json};
use tandem_kit::testing::{TestDatabases, assert_problem, fresh_database, recorder};
use uuid::Uuid;

async fn serve(db: &TestDatabases) -> (String, App) {
    let app = acceptor::build(Config::with_database(db.first_url()))
        .await
        .expect("build");
    let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(app.clone().run(listener, std::future::pending()));
    (url, app)
}

async fn post(url: &str, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn ballot(epoch: u64, round: u32) -> Value {
    json!({ "epoch": epoch, "round": round })
}

/// A participant's ballot-0 2a for its own instance.
fn vote(txn: Uuid, i: u8, leader: Option<&str>) -> Value {
    json!({ "txn_id": txn, "n": 2, "acceptor": 1, "from": { "Participant": i },
            "leader_url": leader,
            "msg": { "Phase2a": { "ballot": ballot(0, 0), "values": [[i, "Prepared"]] } } })
}

/// A leader's message (`Phase1a` / `Phase2a`).
fn from_leader(txn: Uuid, msg: Value) -> Value {
    json!({ "txn_id": txn, "n": 2, "acceptor": 1, "from": { "Coordinator": 0 },
            "leader_url": null, "msg": msg })
}

#[tokio::test]
async fn an_acceptor_answers_as_its_core_and_keeps_its_state_across_a_restart() {
    let db = fresh_database("acceptor").await;
    let (url, _app) = serve(&db).await;
    let (leader_url, got) = recorder("/transactions/{id}/paxos", json!({})).await;
    let txn = Uuid::now_v7();

    // Ballot 0: nothing is answered to the participant; once both instances have a value the
    // bundle goes to the leader.
    let (s, r) = post(&url, "/paxos/phase2a", vote(txn, 0, Some(&leader_url))).await;
    assert_eq!((s.as_u16(), &r["reply"]), (200, &Value::Null), "{r}");
    assert!(got.lock().unwrap().is_empty());
    let (s, _) = post(&url, "/paxos/phase2a", vote(txn, 1, Some(&leader_url))).await;
    assert_eq!(s, 200);
    let bundle = tandem_tests_eventually(|| got.lock().unwrap().first().cloned()).await;
    assert_eq!(bundle["acceptor"], 1, "{bundle}");
    assert_eq!(
        bundle["msg"]["Phase2b"]["accepted"],
        json!([[0, ballot(0, 0), "Prepared"], [1, ballot(0, 0), "Prepared"]])
    );

    // A leader of epoch 2 runs phase 1: the acceptor promises and reports ballot 0's values.
    let p1 = json!({ "Phase1a": { "ballot": ballot(2, 1), "instances": [0, 1] } });
    let (_, r) = post(&url, "/paxos/phase1a", from_leader(txn, p1)).await;
    assert_eq!(
        r["reply"]["Phase1b"]["reports"],
        json!([
            [0, [ballot(0, 0), "Prepared"]],
            [1, [ballot(0, 0), "Prepared"]]
        ]),
        "{r}"
    );

    // Restart on the same database: the promise to (2, 1) holds, so an older leader's 2a
    // (epoch 1) is refused — no reply, nothing accepted.
    let (url, _app) = serve(&db).await;
    let stale = json!({ "Phase2a": { "ballot": ballot(1, 7), "values": [[0, "Aborted"]] } });
    let (s, r) = post(&url, "/paxos/phase2a", from_leader(txn, stale)).await;
    assert_eq!((s.as_u16(), &r["reply"]), (200, &Value::Null), "{r}");
    let current = json!({ "Phase2a": { "ballot": ballot(2, 1), "values": [[0, "Prepared"]] } });
    let (_, r) = post(&url, "/paxos/phase2a", from_leader(txn, current)).await;
    assert_eq!(
        r["reply"]["Phase2b"]["accepted"],
        json!([[0, ballot(2, 1), "Prepared"]]),
        "{r}"
    );
    let slots: Value = reqwest::get(format!("{url}/paxos/{txn}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(slots["slots"][0]["promised"], ballot(2, 1), "{slots}");
    assert_eq!(
        slots["slots"][1]["accepted"],
        json!([ballot(0, 0), "Prepared"])
    );
}

#[tokio::test]
async fn bad_messages_are_problems_and_store_nothing() {
    let db = fresh_database("acceptor_bad").await;
    let (url, app) = serve(&db).await;
    let txn = Uuid::now_v7();
    let cases = [
        // An instance not below n.
        json!({ "txn_id": txn, "n": 2, "acceptor": 0, "from": { "Participant": 0 },
                "leader_url": null,
                "msg": { "Phase2a": { "ballot": ballot(0, 0), "values": [[5, "Prepared"]] } } }),
        // Not a message for an acceptor.
        json!({ "txn_id": txn, "n": 2, "acceptor": 0, "from": { "Participant": 0 },
                "leader_url": null, "msg": "Query" }),
        // n out of range.
        json!({ "txn_id": txn, "n": 0, "acceptor": 0, "from": { "Participant": 0 },
                "leader_url": null,
                "msg": { "Phase1a": { "ballot": ballot(1, 1), "instances": [] } } }),
    ];
    for body in cases {
        let (s, r) = post(&url, "/paxos/phase2a", body).await;
        assert_problem(
            s,
            &r,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        );
    }
    let (s, r) = post(&url, "/paxos/phase1a", json!({ "txn_id": "nope" })).await;
    assert!(s.is_client_error(), "{s} {r}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM paxos_acceptor")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

/// Wait (up to 10 s) until `f` gives something.
async fn tandem_tests_eventually<T>(f: impl Fn() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out");
}

/// The acceptor's OpenAPI document and its router agree.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let db = fresh_database("acceptor_openapi").await;
    let (url, _app) = serve(&db).await;
    let n = tandem_kit::testing::assert_documented(&url).await;
    assert!(n >= 9, "{n} operations");
}
