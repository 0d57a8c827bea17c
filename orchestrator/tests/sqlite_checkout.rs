//! The orchestrator on the embedded SQLite store, end to end: the checkout saga (completed, and
//! compensated in reverse order) against the real services (in-process, on their own Postgres
//! databases: separate components), an operator's cancel, what needs Postgres refused clearly
//! (transactions, a second orchestrator on the same file, `DATABASE_OWNER_URL`), and an
//! in-flight saga that survives kill -9 of the orchestrator binary and resumes from the file.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

/// The three checkout services, in-process on fresh Postgres databases, faults on.
struct Services {
    urls: [String; 3],
    _dbs: Vec<tandem_kit::testing::TestDatabases>,
}

async fn services(name: &str) -> Services {
    let mut urls = Vec::new();
    let mut dbs = Vec::new();
    let specs: [&'static tandem_kit::service::Spec; 3] =
        [&inventory::SPEC, &payment::SPEC, &shipping::SPEC];
    for spec in specs {
        let db = tandem_kit::testing::fresh_database(&format!("{name}_{}", spec.name)).await;
        let mut c = tandem_kit::service::Config::with_database(db.first_url());
        c.db_pool_size = 3;
        c.fault_injection = tandem_kit::faults::Switch::On;
        let app = tandem_kit::service::build(spec, c).await.unwrap();
        let l = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        urls.push(format!("http://{}", l.local_addr().unwrap()));
        tokio::spawn(app.run(l, std::future::pending()));
        dbs.push(db);
    }
    Services {
        urls: urls.try_into().unwrap(),
        _dbs: dbs,
    }
}

/// A data directory removed when the test passes.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        DataDir(std::env::temp_dir().join(format!("tandem-sqlite-{name}-{}", Uuid::now_v7())))
    }
    fn url(&self) -> String {
        tandem_kit::sqlite::url(&self.0.join("orchestrator.db"))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn config(url: &str, s: &Services) -> orchestrator::Config {
    let mut c = orchestrator::Config::new(url, &s.urls[0], &s.urls[1], &s.urls[2]);
    c.listen_addr = ([127, 0, 0, 1], 0).into();
    c.db_pool_size = 4;
    c.poll_interval_ms = 100;
    c
}

/// An orchestrator on `url` served on an ephemeral port: its base URL.
async fn orchestrator(url: &str, s: &Services) -> String {
    let app = orchestrator::build(config(url, s)).await.unwrap();
    assert_eq!(app.store().backend(), "sqlite");
    let l = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(app.run(l, std::future::pending()));
    base
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn input(order: &str, sku: &str, card: &str) -> Value {
    json!({
        "order_id": order,
        "customer_id": "cust-42",
        "items": [{ "sku": sku, "quantity": 2 }],
        "amount_cents": 5198,
        "currency": "EUR",
        "payment": { "card_token": card },
        "shipping": { "address": {
            "name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
            "postal_code": "SW1Y 4JH", "country": "GB"
        }}
    })
}

async fn set_stock(s: &Services, sku: &str, n: i64) {
    let http = reqwest::Client::new();
    let (st, v) = send(
        http.put(format!("{}/stock/{sku}", s.urls[0]))
            .json(&json!({ "available": n })),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

async fn stock(s: &Services, sku: &str) -> i64 {
    let (st, v) = send(reqwest::Client::new().get(format!("{}/stock/{sku}", s.urls[0]))).await;
    assert_eq!(st, 200, "{v}");
    v["available"].as_i64().unwrap()
}

async fn payments(s: &Services, order: &str) -> Vec<Value> {
    let (st, v) =
        send(reqwest::Client::new().get(format!("{}/payments?order_id={order}", s.urls[1]))).await;
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .or_else(|| v["items"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// The saga once settled (long polls), failing after `within`.
async fn settled(base: &str, id: &str, within: Duration) -> Value {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (st, v) = send(http.get(format!("{base}/sagas/{id}?wait=5"))).await;
        assert_eq!(st, 200, "{v}");
        if matches!(
            v["status"].as_str(),
            Some("completed" | "compensated" | "failed")
        ) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not settled: {v}");
    }
}

/// Wait (10 s at most) until saga `id` has started its charge.
async fn charge_started(base: &str, id: &str) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = send(http.get(format!("{base}/sagas/{id}"))).await;
        if kinds_of(&v, "step_started").contains(&"charge_payment") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kinds_of<'a>(v: &'a Value, kind: &str) -> Vec<&'a str> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["step"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_completes_and_compensates_on_sqlite() {
    let s = services("sqlite_checkout").await;
    let dir = DataDir::new("checkout");
    let base = orchestrator(&dir.url(), &s).await;
    let http = reqwest::Client::new();
    set_stock(&s, "sku-sq", 10).await;

    // Happy path: completed, every step's output kept, stock taken.
    let (st, v) = send(
        http.post(format!("{base}/sagas?wait=20"))
            .header("Idempotency-Key", "sq-1")
            .json(&json!({"definition": "checkout", "input": input("sq-1", "sku-sq", "tok_visa")})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = settled(&base, &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        kinds_of(&done, "step_succeeded"),
        ["reserve_inventory", "charge_payment", "create_shipment"]
    );
    assert_eq!(stock(&s, "sku-sq").await, 8);
    // The Idempotency-Key replays it (200, the same saga), from the SQLite file.
    let (st, again) = send(
        http.post(format!("{base}/sagas"))
            .header("Idempotency-Key", "sq-1")
            .json(&json!({"definition": "checkout", "input": input("sq-1", "sku-sq", "tok_visa")})),
    )
    .await;
    assert_eq!(
        (st, again["id"].as_str()),
        (200, Some(id.as_str())),
        "{again}"
    );

    // A declined card: compensated in reverse order, the stock is back.
    let (st, v) =
        send(http.post(format!("{base}/sagas")).json(
            &json!({"definition": "checkout", "input": input("sq-2", "sku-sq", "tok_decline")}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    let comp = settled(&base, v["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(comp["status"], "compensated", "{comp}");
    assert_eq!(
        kinds_of(&comp, "compensation_succeeded"),
        ["charge_payment", "reserve_inventory"]
    );
    assert_eq!(stock(&s, "sku-sq").await, 8);

    // The list and the console's reads work on SQLite too.
    let (st, list) = send(http.get(format!("{base}/sagas?status=compensated"))).await;
    assert_eq!(st, 200, "{list}");
    let items = list["items"]
        .as_array()
        .or(list["sagas"].as_array())
        .unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let (st, h) = send(http.get(format!("{base}/healthz"))).await;
    assert_eq!((st, &h["status"]), (200, &json!("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_saga_in_flight_on_sqlite() {
    let s = services("sqlite_cancel").await;
    let dir = DataDir::new("cancel");
    let base = orchestrator(&dir.url(), &s).await;
    let http = reqwest::Client::new();
    set_stock(&s, "sku-c", 5).await;
    // The charge takes 3 s: it is in flight when the operator cancels.
    let fault = json!({"order_id": "sc-1", "op": "action", "kind": "latency", "latency_ms": 3000});
    let (st, v) = send(http.post(format!("{}/faults", s.urls[1])).json(&fault)).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = send(
        http.post(format!("{base}/sagas"))
            .json(&json!({"definition": "checkout", "input": input("sc-1", "sku-c", "tok_visa")})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    charge_started(&base, &id).await;
    let (st, v) = send(
        http.post(format!("{base}/sagas/{id}/cancel"))
            .header("Tandem-Actor", "alice"),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "compensating");
    let done = settled(&base, &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "compensated", "{done}");
    assert_eq!(
        kinds_of(&done, "compensation_succeeded"),
        ["charge_payment", "reserve_inventory"]
    );
    assert_eq!(stock(&s, "sku-c").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_needs_postgres_is_refused_clearly_on_sqlite() {
    let s = services("sqlite_refuse").await;
    let dir = DataDir::new("refuse");
    let base = orchestrator(&dir.url(), &s).await;
    let http = reqwest::Client::new();

    // Transactions: 501 needs-postgres, nothing stored.
    let body = json!({"protocol": "2pc", "definition": "checkout",
                      "input": input("t-1", "sku-t", "tok_visa")});
    let r = http
        .post(format!("{base}/transactions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:tandem:problem:needs-postgres", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("Postgres"), "{p}");
    for path in [
        "/transactions",
        &format!("/transactions/{}", Uuid::now_v7()),
    ] {
        let (st, p) = send(http.get(format!("{base}{path}"))).await;
        assert_eq!(
            (st, &p["type"]),
            (501, &json!("urn:tandem:problem:needs-postgres"))
        );
    }
    let (st, list) = send(http.get(format!("{base}/sagas"))).await;
    assert_eq!(st, 200);
    assert_eq!(
        list["items"]
            .as_array()
            .or(list["sagas"].as_array())
            .map(Vec::len),
        Some(0),
        "{list}"
    );

    // A second orchestrator on the same data directory: refused by the lock file.
    let err = match orchestrator::build(config(&dir.url(), &s)).await {
        Ok(_) => panic!("a second orchestrator started on the same SQLite file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("another orchestrator"), "{err}");
    assert!(err.contains("Postgres"), "{err}");

    // DATABASE_OWNER_URL has no meaning on SQLite: refused, naming it.
    let other = DataDir::new("owner");
    let mut c = config(&other.url(), &s);
    c.database_owner_url = Some("postgres://owner@127.0.0.1/x".into());
    let err = match orchestrator::build(c).await {
        Ok(_) => panic!("DATABASE_OWNER_URL accepted on SQLite"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("DATABASE_OWNER_URL"), "{err}");

    // An in-memory database would lose every saga: refused, asking for a file.
    let err = match orchestrator::build(config("sqlite::memory:", &s)).await {
        Ok(_) => panic!("an in-memory SQLite store accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("in-memory") && err.contains("file"), "{err}");
}

/// The orchestrator binary on `url`, listening on `port`, killed on drop.
struct Binary(Child);

impl Binary {
    fn spawn(url: &str, port: u16, s: &Services) -> Binary {
        let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .env("DATABASE_URL", url)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("INVENTORY_URL", &s.urls[0])
            .env("PAYMENT_URL", &s.urls[1])
            .env("SHIPPING_URL", &s.urls[2])
            .env("INSTANCE_ID", "sqlite-crash")
            .env("DB_POOL_SIZE", "4")
            .env("POLL_INTERVAL_MS", "100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the orchestrator binary runs");
        Binary(child)
    }

    fn kill9(&mut self) {
        // SIGKILL: no graceful shutdown, no lease handed back.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn up(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_in_flight_at_kill_9_resumes_from_the_sqlite_file() {
    let s = services("sqlite_kill").await;
    let dir = DataDir::new("kill");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    set_stock(&s, "sku-k", 5).await;
    // The charge takes 2 s: the orchestrator is killed while it is in flight.
    let fault = json!({"order_id": "k-1", "op": "action", "kind": "latency", "latency_ms": 2000});
    let (st, v) = send(http.post(format!("{}/faults", s.urls[1])).json(&fault)).await;
    assert_eq!(st, 201, "{v}");

    let mut first = Binary::spawn(&dir.url(), port, &s);
    up(&base).await;
    let (st, v) = send(
        http.post(format!("{base}/sagas"))
            .json(&json!({"definition": "checkout", "input": input("k-1", "sku-k", "tok_visa")})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    charge_started(&base, &id).await;
    first.kill9();

    // The restart takes the lock file again (the kernel released it with the process) and
    // reclaims its lease: the saga completes, charged once.
    let _second = Binary::spawn(&dir.url(), port, &s);
    up(&base).await;
    let done = settled(&base, &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(stock(&s, "sku-k").await, 3);
    let charges = payments(&s, "k-1")
        .await
        .into_iter()
        .filter(|p| p["kind"] == "charge")
        .count();
    assert_eq!(charges, 1, "one charge despite the resend after the crash");
}

/// The orchestrator's own pool on SQLite, every connection at once: WAL and `synchronous =
/// FULL` (a kill -9 cannot prove the latter: the page cache survives it, a power cut would not).
#[tokio::test]
async fn every_connection_of_the_orchestrator_on_sqlite_is_wal_and_synchronous_full() {
    let dir = DataDir::new("pragmas");
    let mut c = orchestrator::Config::new(
        dir.url(),
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
    );
    c.db_pool_size = 3;
    let app = orchestrator::build(c).await.unwrap();
    let orchestrator::store::Store::Sqlite(pool) = app.store() else {
        panic!("the orchestrator is not on SQLite");
    };
    let settings = tandem_kit::sqlite::connection_settings(pool).await.unwrap();
    assert_eq!(settings.len(), 3, "every connection of the pool");
    for c in settings {
        assert_eq!(c.journal_mode, "wal");
        assert_eq!(c.synchronous, 2, "synchronous = FULL");
    }
}
