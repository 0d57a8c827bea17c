//! Defect 1 (orchestrator side): Postgres refuses U+0000 in text and jsonb. Every string that
//! would reach it — stored or used as a query parameter, object keys included — is refused with
//! 422 naming the field, and nothing is stored; a service answer carrying one is a failed call
//! (retried, then compensated), never a saga stuck on its write. Each case answered 500 (or
//! hung) before the fix.

mod common;

use std::time::Duration;

use axum::routing::post;
use serde_json::{Value, json};

fn checkout_input() -> Value {
    json!({
        "order_id": "o-1", "customer_id": "c-1", "amount_cents": 100, "currency": "EUR",
        "items": [{"sku": "widget", "quantity": 1}],
        "payment": {"card_token": "tok_visa"},
        "shipping": {"address": {"name": "Ada", "line1": "1 Main St", "city": "Paris",
                                 "postal_code": "75001", "country": "FR"}}
    })
}

/// A definition with no input schema (any object input), one step on `inventory`.
fn free_definition(name: &str) -> Value {
    json!({
        "name": name,
        "policy": {"max_attempts": 2, "backoff": {"initial_ms": 10, "multiplier": 1.0, "max_ms": 10, "jitter": 0.0}},
        "steps": [{
            "name": "act",
            "action": {"service": "inventory", "method": "POST", "path": "/act", "body": {"in": {"$from": "/input"}}},
            "compensation": {"service": "inventory", "method": "POST", "path": "/undo", "body": {}}
        }]
    })
}

fn assert_names(status: reqwest::StatusCode, body: &Value, pointer: &str) {
    assert_eq!(status, 422, "{body}");
    let errors = body["errors"].as_array().expect("field errors");
    assert!(
        errors
            .iter()
            .any(|e| e["pointer"] == pointer && e["message"].as_str().unwrap().contains("U+0000")),
        "{pointer} not named in {body}"
    );
}

// Both stores refuse the same way (SQLite could store U+0000; the API refuses it anyway, so a
// saga's data moves between stores unchanged).
on_both_stores!(
    nul_in_a_request_is_422_naming_the_field_and_stores_nothing,
    an_answer_postgres_cannot_store_is_a_failed_call_not_a_stuck_saga,
);

async fn nul_in_a_request_is_422_naming_the_field_and_stores_nothing(backend: common::Backend) {
    let o = common::start_with(backend, "nul_api", "http://127.0.0.1:9", |_| {}).await;
    let (s, b) = o.post("/definitions", &free_definition("free")).await;
    assert_eq!(s, 201, "{b}");
    let defs_before = o.count("definitions").await;

    let mut input = checkout_input();
    input["order_id"] = json!("\u{0}");
    let (s, b) = o
        .post("/sagas", &json!({"definition": "checkout", "input": input}))
        .await;
    assert_names(s, &b, "/input/order_id");
    let mut input = checkout_input();
    input["shipping"]["address"]["city"] = json!("Pa\u{0}ris");
    let (s, b) = o
        .post("/sagas", &json!({"definition": "checkout", "input": input}))
        .await;
    assert_names(s, &b, "/input/shipping/address/city");
    // An object key (the definition has no schema to refuse it first).
    let (s, b) = o
        .post(
            "/sagas",
            &json!({"definition": "free", "input": {"k\u{0}": 1}}),
        )
        .await;
    assert_names(s, &b, "/input/k\u{0}");
    let (s, b) = o
        .post("/sagas", &json!({"definition": "fr\u{0}ee", "input": {}}))
        .await;
    assert_names(s, &b, "/definition");
    let (s, b) = o
        .post(
            "/sagas",
            &json!({"definition": "free", "version": "\u{0}", "input": {}}),
        )
        .await;
    assert_names(s, &b, "/version");
    assert_eq!(o.count("sagas").await, 0, "nothing stored");
    assert_eq!(o.count("saga_events").await, 0);
    assert_eq!(o.count("idempotency_keys").await, 0);

    // Query parameters.
    let (s, b) = o.get("/sagas?definition=%00").await;
    assert_names(s, &b, "/query/definition");
    for q in ["status=%00", "cursor=%00"] {
        let (s, b) = o.get(&format!("/sagas?{q}")).await;
        assert_eq!(s, 422, "{q}: {b}");
    }
    // A path parameter: the kit's extractor refuses it like any other string.
    let (s, b) = o.get("/definitions/fr%00ee").await;
    assert_eq!(s, 422, "{b}");

    // Definitions: a string and a key.
    let mut d = free_definition("nul_def");
    d["description"] = json!("a\u{0}b");
    let (s, b) = o.post("/definitions", &d).await;
    assert_names(s, &b, "/description");
    let mut d = free_definition("nul_key");
    d["steps"][0]["action"]["body"] = json!({"x\u{0}": 1});
    let (s, b) = o.post("/definitions", &d).await;
    assert_names(s, &b, "/steps/0/action/body/x\u{0}");
    assert_eq!(
        o.count("definitions").await,
        defs_before,
        "no definition stored"
    );
}

/// A service whose action answers 200 with a body Postgres cannot store, and counts the
/// compensations it receives.
async fn nul_service() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let undone = std::sync::Arc::new(AtomicUsize::new(0));
    let u = undone.clone();
    let app = axum::Router::new()
        .route(
            "/act",
            post(|| async { axum::Json(json!({"id": "a\u{0}b", "ok\u{0}": true})) }),
        )
        .route(
            "/undo",
            post(move || {
                u.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({})) }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, undone)
}

async fn an_answer_postgres_cannot_store_is_a_failed_call_not_a_stuck_saga(
    backend: common::Backend,
) {
    let (svc, undone) = nul_service().await;
    let o = common::start_with(backend, "nul_output", &svc, |_| {}).await;
    let (s, b) = o.post("/definitions", &free_definition("free")).await;
    assert_eq!(s, 201, "{b}");
    let (s, saga) = o
        .post("/sagas", &json!({"definition": "free", "input": {"n": 1}}))
        .await;
    assert_eq!(s, 201, "{saga}");
    let saga = o
        .settled(saga["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(saga["status"], "compensated", "{saga}");
    let step = &saga["steps"][0];
    assert_eq!(step["attempts"], 2, "retried as any bad answer: {saga}");
    let failures: Vec<&Value> = saga["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step_retry_scheduled" || e["kind"] == "step_failed")
        .collect();
    assert_eq!(failures.len(), 2, "{saga}");
    for e in failures {
        assert!(
            e["detail"].to_string().contains("U+0000"),
            "a clear error: {e}"
        );
    }
    assert_eq!(step["output"], Value::Null, "the answer was not kept");
    assert_eq!(undone.load(std::sync::atomic::Ordering::SeqCst), 1);
}
