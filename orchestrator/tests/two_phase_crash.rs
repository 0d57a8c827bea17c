//! Crash points of the 2PC coordinator: the real `orchestrator` binary aborts (SIGABRT, as
//! kill -9 would leave it) after the votes before the decision, after logging the decision
//! before sending it, and in the middle of the broadcast; restarted, it recovers from its log
//! and every participant ends the same way: abort without a Commit record, commit with one.
//! The participants are in-test (see common/participants.rs).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::participants::{Fake, fake, order_definition};
use serde_json::{Value, json};

/// The orchestrator binary as instance `instance` (leases of 1 s, so another instance takes
/// over an orphan quickly).
fn spawn(db: &str, services: &str, port: u16, instance: &str, crash: Option<&str>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    c.env("DATABASE_URL", db)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("INSTANCE_ID", instance)
        .env("LEASE_TTL_MS", "1000")
        .env("POLL_INTERVAL_MS", "100")
        .env("INVENTORY_URL", services)
        .env("PAYMENT_URL", services)
        .env("SHIPPING_URL", services)
        .env("DB_POOL_SIZE", "3")
        .env("RUST_LOG", "warn")
        .env_remove("TANDEM_CRASH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(point) = crash {
        c.env("TANDEM_CRASH", point);
    }
    c.spawn().expect("the orchestrator binary runs")
}

async fn healthy(http: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

/// Wait for `child` to die by its crash point (SIGABRT).
async fn crashed(child: &mut Child) {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(
                status.signal(),
                Some(6),
                "aborted at the crash point: {status:?}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("the crash point was not reached");
}

/// Run one transaction into `point`, check the log at the crash, restart (as the same
/// instance, which takes its leases back at once, or as `recoverer`, which claims the orphan
/// once its lease expires), and return the settled transaction and the participants' record.
async fn crash_and_recover(
    point: &str,
    recoverer: &str,
) -> (Value, Value, Fake, tandem_kit::testing::TestDatabases) {
    let (services, f) = fake().await;
    let guard = tandem_kit::testing::fresh_database("tpc_crash").await;
    let db = guard.first_url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = spawn(
        &db,
        &services,
        port,
        "crash-test",
        Some(&format!("{point}=1")),
    );
    healthy(&http, &url).await;
    let r = http
        .post(format!("{url}/definitions"))
        .json(&order_definition())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // The answer may be lost with the crash: the row is read from the database.
    let _ = http
        .post(format!("{url}/transactions"))
        .json(&json!({"protocol": "2pc", "definition": "order", "input": {"order_id": "c-1"}}))
        .send()
        .await;
    crashed(&mut child).await;
    let pool = tandem_kit::db::connect(&db, 1).await.unwrap();
    let (id, decision, votes): (uuid::Uuid, Option<String>, i64) = sqlx::query_as(
        "SELECT id, decision, (SELECT count(*) FROM jsonb_array_elements(participants) p \
             WHERE p->>'vote' = 'yes' AND p->>'prepared_at' IS NOT NULL) FROM transactions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let commits = f.log.lock().unwrap().commits;
    let at_crash = json!({"decision": decision, "yes_votes": votes, "commits": commits});

    let mut child = spawn(&db, &services, port, recoverer, None);
    healthy(&http, &url).await;
    let mut settled = Value::Null;
    for _ in 0..20 {
        settled = http
            .get(format!("{url}/transactions/{id}?wait=5"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(settled["state"].as_str(), Some("committed" | "aborted")) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (at_crash, settled, f, guard)
}

/// Crash at `point`; the log at the crash must be `at_crash`; after recovery every participant
/// must have been told `outcome` ("commit" or "abort") and none the other.
async fn expect(point: &str, recoverer: &str, at_crash: Value, outcome: &str) {
    let (seen, t, f, _db) = crash_and_recover(point, recoverer).await;
    assert_eq!(seen, at_crash, "the log at the crash");
    let (state, other) = match outcome {
        "commit" => ("committed", "aborted"),
        _ => ("aborted", "committed"),
    };
    common::assert_decided(&t, outcome);
    for p in t["participants"].as_array().unwrap() {
        assert!(
            p["lock_hold_ms"].as_i64().is_some(),
            "lock-hold time across the crash: {p}"
        );
    }
    let log = f.log.lock().unwrap();
    let told: Vec<&String> = log.state.values().collect();
    assert_eq!(told.len(), 3, "{:?}", log.state);
    assert!(told.iter().all(|s| *s == state), "{:?}", log.state);
    let wrong = if other == "committed" {
        log.commits
    } else {
        log.aborts
    };
    assert_eq!(wrong, 0, "nobody was told {other}");
}

/// A test that runs [`expect`] once per row: `point, recoverer, log at the crash => outcome`.
macro_rules! crash_test {
    ($name:ident: $($point:literal, $recoverer:literal, $at_crash:tt => $outcome:literal;)+) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $(expect($point, $recoverer, json!($at_crash), $outcome).await;)+
        }
    };
}

// The logs at a crash: votes in but no decision; Commit logged but not sent; one participant
// told.
crash_test!(crash_after_the_votes_before_the_decision_aborts_everywhere:
    "orchestrator.2pc.after_votes", "crash-test",
        {"decision": null, "yes_votes": 3, "commits": 0} => "abort";
);

crash_test!(crash_after_logging_commit_before_sending_it_commits_everywhere:
    "orchestrator.2pc.after_decision", "crash-test",
        {"decision": "commit", "yes_votes": 3, "commits": 0} => "commit";
);

crash_test!(crash_in_the_middle_of_the_broadcast_commits_everywhere:
    "orchestrator.2pc.mid_broadcast", "crash-test",
        {"decision": "commit", "yes_votes": 3, "commits": 1} => "commit";
);

crash_test!(another_instance_claims_the_orphan_and_finishes_it:
    "orchestrator.2pc.after_decision", "other",
        {"decision": "commit", "yes_votes": 3, "commits": 0} => "commit";
    "orchestrator.2pc.after_votes", "other",
        {"decision": null, "yes_votes": 3, "commits": 0} => "abort";
);
