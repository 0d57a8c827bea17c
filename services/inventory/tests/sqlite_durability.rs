//! The real inventory binary on a SQLite file: every reservation it acknowledged survives a
//! kill -9 in the middle of concurrent traffic, and the stock adds up after the restart.
//! `synchronous = FULL` on every connection of the service's pool, which a kill -9 alone
//! cannot prove (the page cache survives it; a power cut would not), is asserted here too. Also:
//! what needs Postgres answers clearly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::testing::{Served, Store, TempFiles, assert_problem};

/// Initial stock of SKU `a`.
const STOCK: i64 = 1000;
/// Reservations sent at once; the process is killed once [`KILL_AFTER`] are acknowledged.
const SENT: usize = 60;
const KILL_AFTER: usize = 30;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The inventory binary on `url`, listening on `port`, once it answers `/healthz`.
async fn start(url: &str, port: u16, http: &reqwest::Client) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inventory"))
        .env("DATABASE_URL", url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("DATABASE_OWNER_URL")
        .env_remove("NATS_URL")
        .env_remove("TANDEM_TOKENS")
        .env_remove("TANDEM_TOKENS_FILE")
        .env_remove("TANDEM_CRASH")
        .env("FAULT_INJECTION", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the inventory binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await;
        if up.is_ok_and(|r| r.status() == StatusCode::OK) {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("inventory exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "inventory did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `url`, its JSON body.
async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

fn quantity(i: usize) -> i64 {
    (i % 3 + 1) as i64
}

/// Send [`SENT`] reservations at once; kill -9 the process once [`KILL_AFTER`] are
/// acknowledged (201). Which were acknowledged, answers on their way at the kill included.
async fn reserve_then_kill(http: &reqwest::Client, base: &str, mut child: Child) -> Vec<usize> {
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..SENT {
        let (http, base, acks) = (http.clone(), base.to_string(), acks.clone());
        tokio::spawn(async move {
            let body = json!({ "order_id": format!("o-{i}"), "items": [{"sku": "a", "quantity": quantity(i)}] });
            let answer = http
                .post(format!("{base}/reservations"))
                .header("Idempotency-Key", format!("s{i}:reserve:action"))
                .json(&body)
                .send()
                .await;
            if let Ok(r) = answer
                && r.status() == StatusCode::CREATED
            {
                let _ = acks.send(i);
            }
        });
    }
    drop(acks);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < KILL_AFTER {
        acknowledged.push(acked.recv().await.expect("an acknowledgement"));
    }
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().unwrap();
    // Answers that were on their way when the process died count too.
    while let Ok(i) = acked.try_recv() {
        acknowledged.push(i);
    }

    acknowledged
}

#[tokio::test]
async fn acknowledged_reservations_survive_kill_9_on_sqlite() {
    let files = TempFiles::new("durability");
    let url = files.sqlite_url("inventory.db");
    let http = reqwest::Client::new();
    let port = free_port();
    let child = start(&url, port, &http).await;
    let base = format!("http://127.0.0.1:{port}");
    let r = http
        .put(format!("{base}/stock/a"))
        .json(&json!({ "available": STOCK }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let acknowledged = reserve_then_kill(&http, &base, child).await;

    let mut child = start(&url, port, &http).await;
    let mut reserved_sum = 0;
    for i in 0..SENT {
        let rows: Value = get_json(&http, format!("{base}/reservations?order_id=o-{i}")).await;
        let rows = rows.as_array().expect("a list");
        if acknowledged.contains(&i) {
            assert_eq!(rows.len(), 1, "acknowledged reservation o-{i} was lost");
        }
        assert!(rows.len() <= 1, "o-{i}: {rows:?}");
        for row in rows {
            assert_eq!(row["status"], "held");
            assert_eq!(row["items"][0]["quantity"], quantity(i));
            reserved_sum += quantity(i);
        }
    }
    let stock: Value = get_json(&http, format!("{base}/stock/a")).await;
    assert_eq!(stock["reserved"], reserved_sum, "{stock}");
    assert_eq!(stock["available"], STOCK - reserved_sum, "{stock}");
    // A reservation acknowledged before the kill, sent again: replayed, not made twice.
    let i = acknowledged[0];
    let again = http
        .post(format!("{base}/reservations"))
        .header("Idempotency-Key", format!("s{i}:reserve:action"))
        .json(&json!({ "order_id": format!("o-{i}"), "items": [{"sku": "a", "quantity": quantity(i)}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// On SQLite, the 2PC participant answers as a Postgres without `max_prepared_transactions`
/// does (503 `prepared-transactions-disabled`), naming SQLite; so do Paxos Commit's and 3PC's
/// (they prepare the same way), and the 2PC status. Saga calls, reads, `/metrics` and
/// `/stats` work.
#[tokio::test]
async fn what_needs_postgres_says_so_on_sqlite() {
    let svc = Served::start_on(Store::Sqlite, &inventory::SPEC, |_| {}).await;
    let txn = uuid::Uuid::now_v7();
    let body = json!({ "order_id": "o-1", "items": [{"sku": "a", "quantity": 1}] });
    let (s, b) = svc
        .tpc_prepare("http://127.0.0.1:9", txn, "/reservations", body)
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::SERVICE_UNAVAILABLE,
        "prepared-transactions-disabled",
    );
    let detail = b["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("SQLite") && detail.contains("service.db"),
        "{b}"
    );
    let acceptor = "http://127.0.0.1:9";
    let paxos = json!({ "txn_id": uuid::Uuid::now_v7(), "step": 0, "action": "/reservations",
        "body": { "order_id": "px-1", "items": [{ "sku": "a", "quantity": 1 }] },
        "leader_url": acceptor, "acceptors": [acceptor, acceptor, acceptor], "n": 3 });
    for (s, b) in [
        svc.get("/2pc/status").await,
        svc.post("/paxos/prepare", None, paxos).await,
    ] {
        assert_problem(
            s,
            &b,
            StatusCode::SERVICE_UNAVAILABLE,
            "prepared-transactions-disabled",
        );
    }
    assert_eq!(svc.count("saga_barrier").await, 0, "nothing stored");
    for path in ["/metrics", "/stats", "/healthz"] {
        let r = svc
            .http
            .get(format!("{}{path}", svc.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
}

/// The binary on SQLite refuses at start what needs Postgres, naming why: the choreography
/// (`NATS_URL`: its outbox relay) and `DATABASE_OWNER_URL` (Postgres roles).
#[tokio::test]
async fn the_binary_on_sqlite_refuses_what_needs_postgres() {
    let files = TempFiles::new("refusals");
    for (var, value, says) in [
        ("NATS_URL", "nats://127.0.0.1:4222", "needs Postgres"),
        (
            "DATABASE_OWNER_URL",
            "postgres://postgres@127.0.0.1:5432/x",
            "DATABASE_OWNER_URL",
        ),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inventory"))
            .env("DATABASE_URL", files.sqlite_url("refused.db"))
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
            .env_remove("DATABASE_OWNER_URL")
            .env_remove("NATS_URL")
            .env_remove("TANDEM_TOKENS")
            .env_remove("TANDEM_TOKENS_FILE")
            .env(var, value)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{var} on SQLite: the binary did not refuse to start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!status.success(), "{var}: {text}");
        assert!(
            text.contains(says) && text.contains("SQLite"),
            "{var}: {text}"
        );
    }
}

/// The service's own pool on SQLite, every connection at once (so none is checked twice): WAL,
/// `synchronous = FULL` (2), the busy timeout, foreign keys. What `service::build` opens, not
/// only what `tandem_kit::sqlite::open` would.
#[tokio::test]
async fn every_connection_of_the_service_on_sqlite_is_wal_and_synchronous_full() {
    let pool_size = 4;
    let served = Served::start_on(Store::Sqlite, &inventory::SPEC, |c| {
        c.db_pool_size = pool_size;
    })
    .await;
    let tandem_kit::store::Db::Sqlite(pool) = &served.app.db else {
        panic!("the service is not on SQLite");
    };
    let settings = tandem_kit::sqlite::connection_settings(pool).await.unwrap();
    assert_eq!(
        settings.len(),
        pool_size as usize,
        "every connection of the pool"
    );
    for c in settings {
        assert_eq!(c.journal_mode, "wal");
        assert_eq!(c.synchronous, 2, "synchronous = FULL");
        assert_eq!(
            c.busy_timeout_ms,
            tandem_kit::sqlite::BUSY_TIMEOUT.as_millis() as i64
        );
    }
}
