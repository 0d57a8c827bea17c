//! The reads the console adds to the API: every version of a definition
//! (`GET /definitions/{name}/versions`), one version by hash (`GET /definitions/{name}?version=`),
//! and the transactions list's protocol filter, with its bad input as problem+json.

mod common;

use serde_json::{Value, json};

/// A one-step definition; `attempts` makes a different version.
fn definition(attempts: u32) -> Value {
    json!({
        "name": "versions",
        "policy": {"max_attempts": attempts, "backoff": {"initial_ms": 10, "multiplier": 1.0, "max_ms": 10, "jitter": 0.0}},
        "steps": [{
            "name": "act",
            "action": {"service": "inventory", "method": "POST", "path": "/act", "body": {}},
            "compensation": {"service": "inventory", "method": "POST", "path": "/undo", "body": {}}
        }]
    })
}

on_both_stores!(every_definition_version);

async fn every_definition_version(backend: common::Backend) {
    let o = common::start_with(backend, "console_api", "http://127.0.0.1:9", |_| {}).await;
    let (s, first) = o.post("/definitions", &definition(2)).await;
    assert_eq!(s, 201, "{first}");
    let (s, second) = o.post("/definitions", &definition(3)).await;
    assert_eq!(s, 201, "{second}");
    let (old, new) = (&first["version"], &second["version"]);
    assert_ne!(old, new);

    // Newest first, the current one marked, each with its body.
    let (s, b) = o.get("/definitions/versions/versions").await;
    assert_eq!(s, 200, "{b}");
    let items = b["items"].as_array().unwrap();
    let seen: Vec<(&Value, &Value, &Value)> = items
        .iter()
        .map(|v| {
            (
                &v["version"],
                &v["current"],
                &v["definition"]["policy"]["max_attempts"],
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (new, &json!(true), &json!(3)),
            (old, &json!(false), &json!(2))
        ]
    );
    let (s, b) = o.get("/definitions/versions/versions?limit=1").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"].as_array().unwrap().len(), 1);
    let (s, b) = o.get("/definitions/versions/versions?limit=0").await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = o.get("/definitions/nothing/versions").await;
    assert_eq!(s, 404, "{b}");

    // One version by its hash; the current one without.
    let (s, b) = o
        .get(&format!(
            "/definitions/versions?version={}",
            old.as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["definition"]["policy"]["max_attempts"], 2, "{b}");
    let (_, b) = o.get("/definitions/versions").await;
    assert_eq!(&b["version"], new, "{b}");
    for unknown in ["nope", &"0".repeat(64)] {
        let (s, b) = o
            .get(&format!("/definitions/versions?version={unknown}"))
            .await;
        assert_eq!(s, 404, "{unknown}: {b}");
        assert_eq!(b["type"], "urn:tandem:problem:not-found", "{b}");
    }
}

/// Transactions need Postgres (on SQLite the list answers 501 `needs-postgres`, see
/// tests/sqlite_checkout.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transactions_protocol_filter() {
    let o = common::start("console_tx", "http://127.0.0.1:9", |_| {}).await;
    // The protocol filter: a name, or a 422 naming the parameter.
    let (s, b) = o
        .get("/transactions?protocol=paxos-commit&state=committed")
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"], json!([]));
    for bad in ["2PC", "", "a%20b", &"x".repeat(33)] {
        let (s, b) = o.get(&format!("/transactions?protocol={bad}")).await;
        assert_eq!(s, 422, "{bad:?}: {b}");
        assert_eq!(b["errors"][0]["pointer"], "/query/protocol", "{b}");
    }
}
