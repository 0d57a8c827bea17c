//! Operators' actions on both stores (`pg::…`, `sqlite::…`): a saga parked `failed` (its
//! compensation exhausted its budget) is resumed by `POST /sagas/{id}/resume` and ends
//! compensated; `retry-now` sends a waiting step at once; a settled saga refuses both.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::post;
use serde_json::{Value, json};

on_both_stores!(
    a_failed_saga_is_resumed_and_compensates,
    retry_now_sends_a_waiting_step_at_once
);

/// A service whose action answers 409 (business failure: compensate) and whose compensation
/// answers 500 until `healed`; counts the compensations.
async fn service(healed: Arc<AtomicBool>, undos: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new()
        .route(
            "/act",
            post(|| async { (axum::http::StatusCode::CONFLICT, axum::Json(json!({}))) }),
        )
        .route(
            "/undo",
            post(move || {
                undos.fetch_add(1, Ordering::SeqCst);
                let ok = healed.load(Ordering::SeqCst);
                async move {
                    if ok {
                        (axum::http::StatusCode::OK, axum::Json(json!({})))
                    } else {
                        (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({})),
                        )
                    }
                }
            }),
        )
        // Always 503 with a long Retry-After: the step waits for its retry.
        .route(
            "/slow",
            post(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "3600")],
                    axum::Json(json!({})),
                )
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

fn definition(name: &str, path: &str) -> Value {
    json!({
        "name": name,
        "policy": {"max_attempts": 3, "compensation_max_attempts": 2, "max_retry_after_ms": 3_600_000,
                   "backoff": {"initial_ms": 10, "multiplier": 1.0, "max_ms": 10, "jitter": 0.0}},
        "steps": [{
            "name": "act",
            "action": {"service": "inventory", "method": "POST", "path": path, "body": {}},
            "compensation": {"service": "inventory", "method": "POST", "path": "/undo", "body": {}}
        }]
    })
}

async fn action(o: &common::Orch, id: &str, what: &str) -> (reqwest::StatusCode, Value) {
    let r = o
        .http
        .post(format!("{}/sagas/{id}/{what}", o.url))
        .header("Tandem-Actor", "alice")
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn a_failed_saga_is_resumed_and_compensates(backend: common::Backend) {
    let healed = Arc::new(AtomicBool::new(false));
    let undos = Arc::new(AtomicUsize::new(0));
    let svc = service(healed.clone(), undos.clone()).await;
    let o = common::start_with(backend, "actions_resume", &svc, |_| {}).await;
    let (s, b) = o.post("/definitions", &definition("park", "/act")).await;
    assert_eq!(s, 201, "{b}");
    let (s, saga) = o
        .post("/sagas", &json!({"definition": "park", "input": {}}))
        .await;
    assert_eq!(s, 201, "{saga}");
    let id = saga["id"].as_str().unwrap().to_string();
    let parked = o.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(parked["status"], "failed", "{parked}");
    assert_eq!(undos.load(Ordering::SeqCst), 2, "the compensation's budget");

    healed.store(true, Ordering::SeqCst);
    let (s, b) = action(&o, &id, "resume").await;
    assert_eq!(s, 202, "{b}");
    let done = o.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "compensated", "{done}");
    let retried: Vec<&Value> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "saga_retried")
        .collect();
    assert_eq!(retried.len(), 1, "{done}");
    assert_eq!(retried[0]["detail"]["by"], "alice", "{done}");

    // Settled: both actions are refused, naming why.
    for what in ["resume", "cancel"] {
        let (s, b) = action(&o, &id, what).await;
        assert_eq!(s, 409, "{what}: {b}");
    }
}

async fn retry_now_sends_a_waiting_step_at_once(backend: common::Backend) {
    let healed = Arc::new(AtomicBool::new(true));
    let undos = Arc::new(AtomicUsize::new(0));
    let svc = service(healed, undos).await;
    let o = common::start_with(backend, "actions_retry_now", &svc, |_| {}).await;
    let (s, b) = o.post("/definitions", &definition("wait", "/slow")).await;
    assert_eq!(s, 201, "{b}");
    let (s, saga) = o
        .post("/sagas", &json!({"definition": "wait", "input": {}}))
        .await;
    assert_eq!(s, 201, "{saga}");
    let id = saga["id"].as_str().unwrap().to_string();
    // The step waits an hour for its retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = o.get(&format!("/sagas/{id}")).await;
        if v["steps"][0]["attempts"] == 1 && !v["next_attempt_at"].is_null() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, b) = action(&o, &id, "retry-now").await;
    assert_eq!(s, 202, "{b}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = o.get(&format!("/sagas/{id}")).await;
        if v["steps"][0]["attempts"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not sent again: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And cancelled: compensated.
    let (s, b) = action(&o, &id, "cancel").await;
    assert!(s == 202 || s == 200, "{s}: {b}");
    let done = o.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "compensated", "{done}");
}
