//! Retention against real Postgres and the real services (docs/security.md, "Retention"):
//! finished sagas are forgotten by every service, then deleted; running and parked ones keep
//! their rows and their barrier rows; a forget is idempotent, so a crash between forget and
//! delete only repeats it; the services' age backstop deletes only what is older than it; bad
//! forget calls are problem+json.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::retention::{LOCK_KEY, Purged, Retention, Settings};
use serde_json::{Value, json};
use sqlx::PgPool;
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::{TestStack, eventually, in_process, post_definition};

const SERVICES: [&str; 3] = ["inventory", "payment", "shipping"];

/// Pools on the stack's orchestrator database and each service's.
struct Dbs {
    orchestrator: PgPool,
    services: BTreeMap<&'static str, PgPool>,
}

impl Dbs {
    async fn of(stack: &TestStack) -> Dbs {
        let connect = |c: &str| {
            let url = stack.layout.database_url(c);
            async move { tandem_kit::db::connect(&url, 2).await.unwrap() }
        };
        let mut services = BTreeMap::new();
        for s in SERVICES {
            services.insert(s, connect(s).await);
        }
        Dbs {
            orchestrator: connect("orchestrator").await,
            services,
        }
    }

    /// Barrier rows of saga `id` in each service (inventory, payment, shipping).
    async fn barrier_rows(&self, id: &str) -> Vec<i64> {
        let mut n = Vec::new();
        for pool in self.services.values() {
            n.push(
                sqlx::query_scalar("SELECT count(*) FROM saga_barrier WHERE saga_id = $1")
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            );
        }
        n
    }

    /// Rows of saga `id` in the orchestrator: saga, events, client keys, business keys.
    async fn saga_rows(&self, id: &str) -> [i64; 4] {
        let id: uuid::Uuid = id.parse().unwrap();
        let q = |sql: &'static str| {
            let pool = self.orchestrator.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        [
            q("SELECT count(*) FROM sagas WHERE id = $1").await,
            q("SELECT count(*) FROM saga_events WHERE saga_id = $1").await,
            q("SELECT count(*) FROM idempotency_keys WHERE saga_id = $1").await,
            q("SELECT count(*) FROM business_keys WHERE id = $1").await,
        ]
    }
}

/// A purger on the stack's orchestrator database and services, keeping finished sagas for
/// `keep` (the test drives its passes; the stack's own loop has saga purging off).
fn purger(stack: &TestStack, dbs: &Dbs, keep: Duration) -> Retention {
    let services = [
        ("inventory", &stack.inventory_url),
        ("payment", &stack.payment_url),
        ("shipping", &stack.shipping_url),
    ]
    .into_iter()
    .map(|(n, u)| (n.to_string(), u.clone()))
    .collect();
    Retention::new(
        dbs.orchestrator.clone(),
        services,
        tandem_tests::http_headers(Some(&stack.tokens().service)),
        Settings {
            sagas: Some(keep),
            keys: Duration::from_secs(86_400),
            batch: 2,
            every: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

/// The stack with the orchestrator's own saga purge off (tests run the passes).
async fn stack(name: &str) -> (TestStack, Client) {
    in_process(name, |c| c.saga_purge = tandem_kit::faults::Switch::Off).await
}

async fn settled(c: &Client, id: &str, status: &str) -> Value {
    let s = c.settle(id, 60).await.unwrap();
    assert_eq!(s["status"], status, "{}", demo::timeline(&s));
    s
}

/// A checkout of one unit of `sku` to `country` (`ZZ`: undeliverable) through `definition`,
/// accepted (201); its saga id.
async fn checkout(c: &Client, definition: &str, order: &str, sku: &str, country: &str) -> String {
    let input = checkout_input(order, sku, 1, "tok_visa", country);
    tandem_tests::start(c, definition, &input).await
}

/// The checkout, renamed, with a compensation budget of one attempt and quick retries: a
/// compensation that keeps failing parks the saga (`failed`) at once.
async fn define_parking_checkout(c: &Client) {
    let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = json!("checkout-parking");
    def["policy"]["compensation_max_attempts"] = json!(1);
    def["policy"]["backoff"] =
        json!({"initial_ms": 10, "multiplier": 2.0, "max_ms": 20, "jitter": 0.0});
    let r = post_definition(c, &def).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_forgotten_everywhere_then_purged_while_running_and_parked_stay() {
    let (stack, c) = stack("retain").await;
    let dbs = Dbs::of(&stack).await;
    c.set_stock("sku-ret", 100).await.unwrap();
    define_parking_checkout(&c).await;

    // Completed (with a client Idempotency-Key), and compensated (undeliverable address).
    let input = checkout_input("ret-done", "sku-ret", 1, "tok_visa", "GB");
    let r = c
        .start_saga("checkout", &input, Some("client-key-ret"))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let done = r.body["id"].as_str().unwrap().to_string();
    let undone = checkout(&c, "checkout", "ret-zz", "sku-ret", "ZZ").await;
    // Parked: the refund keeps failing and its budget is one attempt.
    c.add_fault(
        "payment",
        &json!({"order_id": "ret-park", "op": "compensation", "kind": "transient", "times": 1000}),
    )
    .await
    .unwrap();
    let parked = checkout(&c, "checkout-parking", "ret-park", "sku-ret", "ZZ").await;
    // Running: shipping answers 425 (in progress) until the step's 30 s deadline.
    c.add_fault(
        "shipping",
        &json!({"order_id": "ret-run", "op": "action", "kind": "in_progress", "times": 1000}),
    )
    .await
    .unwrap();
    let running = checkout(&c, "checkout", "ret-run", "sku-ret", "GB").await;
    settled(&c, &done, "completed").await;
    settled(&c, &undone, "compensated").await;
    settled(&c, &parked, "failed").await;
    tandem_tests::saga_reaches(&c, &running, "step_started", "create_shipment").await;

    // Every service holds barrier rows of every one of them (but shipping of the running one:
    // an answer 425 records nothing).
    let mut before = BTreeMap::new();
    for id in [&done, &undone, &parked, &running] {
        let rows = dbs.barrier_rows(id).await;
        let expected = if id == &running { 2 } else { 3 };
        assert_eq!(
            rows.iter().filter(|&&n| n > 0).count(),
            expected,
            "saga {id}: {rows:?}"
        );
        before.insert(id.clone(), rows);
    }
    assert_eq!(
        dbs.saga_rows(&done).await[2..],
        [1, 1],
        "client and business key"
    );

    // Kept for a day: nothing is due.
    let keep_long = purger(&stack, &dbs, Duration::from_secs(86_400));
    assert_eq!(keep_long.pass().await.unwrap(), Purged::default());

    // Kept for no time: the two finished sagas go (batch 2: one full batch, one empty).
    let p = purger(&stack, &dbs, Duration::ZERO);
    assert_eq!(p.pass().await.unwrap().sagas, 2);
    for id in [&done, &undone] {
        assert_eq!(dbs.barrier_rows(id).await, [0, 0, 0], "saga {id} forgotten");
        assert_eq!(dbs.saga_rows(id).await, [0, 0, 0, 0], "saga {id} purged");
        let r = c
            .get(&format!("{}/sagas/{id}", c.orchestrator))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{}", r.body);
    }
    // Parked and running sagas keep everything, their barrier rows included.
    for id in [&parked, &running] {
        assert_eq!(dbs.barrier_rows(id).await, before[id], "saga {id}");
        assert_eq!(dbs.saga_rows(id).await[0], 1, "saga {id} kept");
    }
    assert_eq!(p.pass().await.unwrap(), Purged::default(), "nothing more");
    // The business records (the audit) stay.
    assert_eq!(c.payments("ret-done").await.unwrap().len(), 1);
    // The parked saga, once resumed and compensated, is then purged like any other.
    c.send_json(
        reqwest::Method::DELETE,
        &format!("{}/faults?order_id=ret-park", c.payment),
        &json!({}),
    )
    .await
    .unwrap();
    let r = c.saga_action(&parked, "resume", "ops").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    settled(&c, &parked, "compensated").await;
    assert_eq!(p.pass().await.unwrap().sagas, 1);
    assert_eq!(dbs.barrier_rows(&parked).await, [0, 0, 0]);
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_forget_and_delete_repeats_the_forget_harmlessly() {
    let (stack, c) = stack("retcrash").await;
    let dbs = Dbs::of(&stack).await;
    c.set_stock("sku-rc", 10).await.unwrap();
    let id = checkout(&c, "checkout", "rc-1", "sku-rc", "GB").await;
    settled(&c, &id, "completed").await;
    let p = purger(&stack, &dbs, Duration::ZERO);
    // What a purger that crashed at orchestrator.retention.after_forget had done: the forget
    // went out, the delete never committed.
    p.forget(&[id.parse().unwrap()]).await.unwrap();
    assert_eq!(dbs.barrier_rows(&id).await, [0, 0, 0]);
    assert_eq!(dbs.saga_rows(&id).await[0], 1, "the saga is still there");
    // Another instance holds the purger's lock: this one skips its batch.
    let mut other = dbs.orchestrator.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(p.purge_sagas_batch().await.unwrap(), None);
    other.rollback().await.unwrap();
    // The next pass forgets again (nothing left to forget: fine) and deletes.
    assert_eq!(p.pass().await.unwrap().sagas, 1);
    assert_eq!(dbs.saga_rows(&id).await, [0, 0, 0, 0]);
    // Forgetting a saga no service knows, twice: 200, nothing deleted (as the orchestrator:
    // the service token).
    let unknown = uuid::Uuid::now_v7().to_string();
    let orchestrator = c.clone().with_token(&stack.tokens().service);
    for _ in 0..2 {
        for url in [&c.inventory, &c.payment, &c.shipping] {
            let r = orchestrator
                .send_json(
                    reqwest::Method::POST,
                    &format!("{url}/barrier/forget"),
                    &json!({"saga_ids": [unknown, id]}),
                )
                .await
                .unwrap();
            assert_eq!((r.status, &r.body), (200, &json!({"forgotten": 0})));
        }
    }
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrators_own_loop_purges_finished_sagas_after_their_retention() {
    let (stack, c) = in_process("retloop", |c| {
        c.saga_retention_secs = 1;
        c.purge.purge_interval_ms = 100;
    })
    .await;
    let dbs = Dbs::of(&stack).await;
    c.set_stock("sku-rl", 10).await.unwrap();
    let id = checkout(&c, "checkout", "rl-1", "sku-rl", "GB").await;
    settled(&c, &id, "completed").await;
    eventually(Duration::from_secs(30), "the saga purged", || async {
        (dbs.saga_rows(&id).await == [0, 0, 0, 0]).then_some(())
    })
    .await;
    assert_eq!(dbs.barrier_rows(&id).await, [0, 0, 0]);
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backstop_deletes_only_barrier_rows_older_than_it() {
    let (stack, c) = stack("retbackstop").await;
    let dbs = Dbs::of(&stack).await;
    c.set_stock("sku-rb", 10).await.unwrap();
    let mut ids = Vec::new();
    for order in ["rb-old", "rb-new"] {
        let id = checkout(&c, "checkout", order, "sku-rb", "GB").await;
        settled(&c, &id, "completed").await;
        ids.push(id);
    }
    let inventory = &dbs.services["inventory"];
    // The first saga's rows are 91 days old, the second's 89.
    for (id, days) in [(&ids[0], 91), (&ids[1], 89)] {
        sqlx::query(
            "UPDATE saga_barrier SET created_at = now() - make_interval(days => $2) \
             WHERE saga_id = $1",
        )
        .bind(id)
        .bind(days)
        .execute(inventory)
        .await
        .unwrap();
    }
    let ninety_days = Duration::from_secs(90 * 86_400);
    let n = tandem_kit::retention::purge_backstop(inventory, ninety_days, 1000)
        .await
        .unwrap();
    assert_eq!(n, 1, "the old saga's one inventory row");
    assert_eq!(dbs.barrier_rows(&ids[0]).await, [0, 1, 1]);
    assert_eq!(dbs.barrier_rows(&ids[1]).await, [1, 1, 1]);
    assert_eq!(
        tandem_kit::retention::purge_backstop(inventory, ninety_days, 1000)
            .await
            .unwrap(),
        0
    );
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_forget_calls_are_problems_and_delete_nothing() {
    let (stack, c) = stack("retbad").await;
    let dbs = Dbs::of(&stack).await;
    c.set_stock("sku-rx", 10).await.unwrap();
    let id = checkout(&c, "checkout", "rx-1", "sku-rx", "GB").await;
    settled(&c, &id, "completed").await;
    let url = format!("{}/barrier/forget", c.payment);
    let http = stack.http(tandem_kit::auth::Role::Service);
    let too_many: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("{\"saga_ids\": [", "application/json".into(), 400, ""),
        ("[]", "application/json".into(), 422, ""),
        ("{}", "application/json".into(), 422, ""),
        (
            "{\"saga_ids\": []}",
            "application/json".into(),
            422,
            "/saga_ids",
        ),
        (
            "{\"saga_ids\": [\"a b\"]}",
            "application/json".into(),
            422,
            "/saga_ids/0",
        ),
        (
            "{\"saga_ids\": [\"\"]}",
            "application/json".into(),
            422,
            "/saga_ids/0",
        ),
        ("{\"saga_ids\": [7]}", "application/json".into(), 422, ""),
        (
            "{\"saga_ids\": [\"x\"], \"all\": true}",
            "application/json".into(),
            422,
            "",
        ),
        ("saga_ids=x", "text/plain".into(), 415, ""),
    ];
    let long = json!({"saga_ids": [format!("{id}"), "y".repeat(256)]}).to_string();
    let many = json!({ "saga_ids": too_many }).to_string();
    let cases = cases
        .into_iter()
        .map(|(b, t, s, p)| (b.to_string(), t, s, p))
        .chain([
            (long, "application/json".into(), 422, "/saga_ids/1"),
            (many, "application/json".into(), 422, "/saga_ids"),
        ]);
    for (body, ctype, status, pointer) in cases {
        let r = http
            .post(&url)
            .header("content-type", ctype)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let p: Value = r.json().await.unwrap();
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:tandem:problem:"),
            "{p}"
        );
        if !pointer.is_empty() {
            assert_eq!(p["errors"][0]["pointer"], pointer, "{body}: {p}");
        }
    }
    // The saga's payment rows survived every refused call (one valid id rode along in `long`).
    assert_eq!(dbs.barrier_rows(&id).await, [1, 1, 1]);
    stack.stop().await.unwrap();
}
