//! In-test 2PC participants that follow the HTTP contract (docs/commit-protocols.md, "over the
//! services"): `POST /2pc/prepare|commit|abort`, `GET /2pc/status`. They record every message,
//! so atomicity is checked on what each participant was told.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// What the in-test participants were told, and how they vote.
#[derive(Default)]
pub struct Log {
    /// (txn, step) → "prepared" | "refused" | "committed" | "aborted"
    pub state: HashMap<(String, u64), String>,
    pub commits: usize,
    pub aborts: usize,
    pub prepares: usize,
    /// Coordinator URLs the prepares named.
    pub coordinator_urls: Vec<String>,
}

#[derive(Clone)]
pub struct Fake {
    pub log: Arc<Mutex<Log>>,
    /// Steps that vote NO.
    pub no: Arc<Mutex<Vec<u64>>>,
    /// A prepare of this step waits for a permit before voting.
    pub held_step: Arc<Mutex<Option<u64>>>,
    pub gate: Arc<Semaphore>,
    pub url: Arc<Mutex<String>>,
    /// `GET /2pc/status` says it cannot prepare (`max_prepared_transactions = 0`).
    pub cannot_prepare: Arc<std::sync::atomic::AtomicBool>,
}

async fn prepare(State(f): State<Fake>, axum::Json(b): axum::Json<Value>) -> axum::Json<Value> {
    let key = (
        b["txn_id"].as_str().unwrap().to_string(),
        b["step"].as_u64().unwrap(),
    );
    if *f.held_step.lock().unwrap() == Some(key.1) {
        f.gate.acquire().await.unwrap().forget();
    }
    let yes = !f.no.lock().unwrap().contains(&key.1);
    let mut log = f.log.lock().unwrap();
    log.prepares += 1;
    log.coordinator_urls
        .push(b["coordinator_url"].as_str().unwrap_or("").to_string());
    let state = log
        .state
        .entry(key)
        .or_insert_with(|| if yes { "prepared" } else { "refused" }.into());
    let vote = if state == "prepared" { "yes" } else { "no" };
    axum::Json(json!({ "txn_id": b["txn_id"], "step": b["step"], "vote": vote }))
}

async fn finish(f: &Fake, b: &Value, to: &str) -> axum::Json<Value> {
    let key = (
        b["txn_id"].as_str().unwrap().to_string(),
        b["step"].as_u64().unwrap(),
    );
    let mut log = f.log.lock().unwrap();
    if to == "committed" {
        log.commits += 1;
    } else {
        log.aborts += 1;
    }
    log.state.insert(key, to.into());
    axum::Json(json!({ "state": to }))
}

/// Serve fake participants on an ephemeral port.
pub async fn fake() -> (String, Fake) {
    let f = Fake {
        log: Arc::default(),
        no: Arc::default(),
        held_step: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
        url: Arc::default(),
        cannot_prepare: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/2pc/prepare", post(prepare))
        .route(
            "/2pc/commit",
            post(
                |State(f): State<Fake>, axum::Json(b): axum::Json<Value>| async move {
                    finish(&f, &b, "committed").await
                },
            ),
        )
        .route(
            "/2pc/abort",
            post(
                |State(f): State<Fake>, axum::Json(b): axum::Json<Value>| async move {
                    finish(&f, &b, "aborted").await
                },
            ),
        )
        .route(
            "/2pc/status",
            get(|State(f): State<Fake>| async move {
                let off = f.cannot_prepare.load(std::sync::atomic::Ordering::SeqCst);
                let max = if off { 0 } else { 256 };
                axum::Json(json!({"can_prepare": !off, "max_prepared_transactions": max}))
            }),
        )
        .with_state(f.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, f)
}

/// Three participants (inventory, payment, shipping — all the fake), a business key.
pub fn order_definition() -> Value {
    let step = |name: &str, service: &str| {
        json!({
            "name": name,
            "action": {"service": service, "method": "POST", "path": format!("/{name}"),
                       "body": {"order_id": {"$from": "/input/order_id"}, "ref": {"$id": "ref"}}},
            "compensation": {"service": service, "method": "POST", "path": format!("/{name}/undo"), "body": {}}
        })
    };
    json!({
        "name": "order",
        "business_key": "/order_id",
        "policy": {"timeout_ms": 2000, "deadline_ms": 10000, "max_attempts": 1},
        "steps": [step("reserve", "inventory"), step("charge", "payment"), step("ship", "shipping")]
    })
}

/// An orchestrator on a fresh database whose services are fake participants, with
/// [`order_definition`] stored.
pub async fn setup(name: &str) -> (super::Orch, Fake) {
    let (url, f) = fake().await;
    let o = super::start(name, &url, |_| {}).await;
    let (s, b) = o.post("/definitions", &order_definition()).await;
    assert_eq!(s, 201, "{b}");
    *f.url.lock().unwrap() = url;
    (o, f)
}

/// Let the held vote through (to a fenced owner), then check the transaction ends aborted on
/// `o` with a fencing epoch, and that no participant was ever told to commit.
pub async fn release_and_expect_abort(o: &super::Orch, f: &Fake, id: &str) {
    f.gate.add_permits(10);
    let done = o.settled_txn(id, std::time::Duration::from_secs(20)).await;
    super::assert_decided(&done, "abort");
    assert!(done["lease"]["epoch"].as_i64().unwrap() >= 2, "{done}");
    let log = f.log.lock().unwrap();
    assert_eq!(
        log.commits, 0,
        "never a split: no participant was told to commit"
    );
    assert!(log.aborts >= 3, "every participant was told to abort");
}
