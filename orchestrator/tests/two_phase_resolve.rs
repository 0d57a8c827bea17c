//! An operator's heuristic decision (`POST /transactions/{id}/resolve`) against an owner that
//! is alive but still collecting votes (one in-test participant holds its vote): a commit is
//! refused while a YES vote is missing from the log, and nothing is stored; an abort takes the
//! lease (fencing the owner), so the owner's later Commit write fails and no participant is
//! ever told to commit.

mod common;

use std::time::Duration;

use common::participants::setup;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heuristic_abort_fences_the_owner_and_a_commit_needs_every_yes() {
    let (o, f) = setup("tpc_resolve").await;
    let url = f.url.lock().unwrap().clone();
    let other = common::start_on(o.database_url.clone(), &url, |_| {}).await;
    *f.held_step.lock().unwrap() = Some(2);
    let input = json!({"protocol": "2pc", "definition": "order", "input": {"order_id": "r-1"}});
    let (s, t) = o.post("/transactions", &input).await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let path = format!("/transactions/{id}/resolve");
    // Two YES votes logged, the third held.
    let mut before = json!(null);
    for _ in 0..200 {
        before = o.get(&format!("/transactions/{id}")).await.1;
        let yes = before["participants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["vote"] == "yes");
        if yes.count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = before["lease"]["owner"].clone();
    assert!(owner.is_string(), "{before}");

    // Commit without the third YES vote: refused, nothing stored.
    let messages = o.count("transaction_messages").await;
    let (s, b) = other.post(&path, &json!({"decision": "commit"})).await;
    assert_eq!((s.as_u16(), b["step"].as_str()), (409, Some("ship")), "{b}");
    assert_eq!(o.count("transaction_messages").await, messages);
    let (_, t) = o.get(&format!("/transactions/{id}")).await;
    assert_eq!(
        (t["decision"].is_null(), t["lease"]["epoch"].as_i64()),
        (true, Some(1)),
        "{t}"
    );
    assert_eq!(t["participants"][2]["vote"], json!(null), "{t}");

    // Abort, from another instance while the owner collects votes: logged, the owner fenced.
    let body = json!({"decision": "abort", "reason": "stuck", "operator": "ops"});
    let (s, t) = other.post(&path, &body).await;
    assert_eq!(
        (s.as_u16(), t["decision"].as_str()),
        (200, Some("abort")),
        "{t}"
    );
    let h = &t["heuristic"]["detail"];
    assert_eq!(
        (&h["previous_owner"], h["operator"].as_str()),
        (&owner, Some("ops")),
        "{t}"
    );
    assert_ne!(t["lease"]["owner"], owner, "{t}");
    assert!(t["lease"]["epoch"].as_i64().unwrap() >= 2, "{t}");
    // The held participant now votes YES to the fenced owner.
    common::participants::release_and_expect_abort(&other, &f, &id).await;
}
