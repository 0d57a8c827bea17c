//! The choreographed checkout end to end: a private `nats-server -js`, real Postgres (one
//! database per service), inventory / payment / shipping with their outbox relays and durable
//! consumers, and the orders entry point — all in-process, on ephemeral ports.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::choreo::nats_testing::PrivateNats;
use tandem_kit::choreo::step::Worker;
use tandem_kit::testing::{Served, TestDatabases, fresh_database};

struct Stack {
    nats: PrivateNats,
    js: async_nats::jetstream::Context,
    inventory: Served,
    payment: Served,
    shipping: Served,
    orders: String,
    /// The orders database (what its retention deleted).
    orders_pool: sqlx::PgPool,
    http: reqwest::Client,
    _workers: Vec<Worker>,
    _orders_db: TestDatabases,
}

async fn stack(step_timeout_ms: u64) -> Option<Stack> {
    stack_with(step_timeout_ms, |_| {}).await
}

async fn stack_with(
    step_timeout_ms: u64,
    adjust: impl FnOnce(&mut orders::Config),
) -> Option<Stack> {
    let nats = PrivateNats::start().await?;
    let js = tandem_kit::choreo::connect(&nats.url).await.unwrap();
    let inventory = Served::with_faults(&inventory::SPEC).await;
    let payment = Served::with_faults(&payment::SPEC).await;
    let shipping = Served::with_faults(&shipping::SPEC).await;
    let workers = vec![
        Worker::start(inventory.app.clone(), &inventory::choreo::STEP, js.clone()),
        Worker::start(payment.app.clone(), &payment::choreo::STEP, js.clone()),
        Worker::start(shipping.app.clone(), &shipping::choreo::STEP, js.clone()),
    ];
    let orders_db = fresh_database("orders").await;
    let mut config = orders::Config::with(orders_db.first_url(), nats.url.clone());
    config.step_timeout_ms = step_timeout_ms;
    adjust(&mut config);
    let app = orders::build(config).await.unwrap();
    let orders_pool = app.pool.clone();
    let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let orders = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(app.run(listener, std::future::pending()));
    Some(Stack {
        nats,
        js,
        inventory,
        payment,
        shipping,
        orders,
        orders_pool,
        http: reqwest::Client::new(),
        _workers: workers,
        _orders_db: orders_db,
    })
}

fn order(id: &str, sku: &str, card: &str, country: &str) -> Value {
    json!({
        "order_id": id,
        "customer_id": "c1",
        "items": [{ "sku": sku, "quantity": 2 }],
        "amount_cents": 1999,
        "currency": "EUR",
        "payment": { "card_token": card },
        "shipping": { "address": {
            "name": "Ada", "line1": "1 Loop Rd", "city": "Lyon", "postal_code": "69001", "country": country
        } }
    })
}

impl Stack {
    async fn stock(&self, sku: &str, available: i64) {
        let resp = self
            .http
            .put(format!("{}/stock/{sku}", self.inventory.url))
            .json(&json!({ "available": available }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    async fn available(&self, sku: &str) -> i64 {
        self.inventory.get(&format!("/stock/{sku}")).await.1["available"]
            .as_i64()
            .unwrap()
    }

    async fn place(&self, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/orders", self.orders))
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /orders/{id}` once it is terminal (long poll).
    async fn settled(&self, id: &str) -> Value {
        let url = format!("{}/orders/{id}?wait_ms=30000", self.orders);
        let body: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = body["status"].as_str().unwrap_or_default();
        assert!(
            status == "completed" || status == "compensated",
            "order {id} did not settle: {body}"
        );
        body
    }

    /// The checkout's effects on the three services, by order.
    async fn effects(&self, id: &str) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
        (
            self.inventory.list("/reservations", id).await,
            self.payment.list("/payments", id).await,
            self.shipping.list("/shipments", id).await,
        )
    }
}

fn events(timeline: &Value) -> Vec<String> {
    timeline["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_checkout_completes_through_events_and_its_timeline_comes_from_the_stream() {
    let Some(s) = stack(10_000).await else { return };
    s.stock("sku-ok", 10).await;
    let (status, placed) = s.place(&order("ok-1", "sku-ok", "tok_visa", "FR")).await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    assert_eq!(placed["order_id"], "ok-1");
    let view = s.settled("ok-1").await;
    assert_eq!(view["status"], "completed");
    assert_eq!(events(&view), ["placed", "reserved", "charged", "booked"]);
    let (reservations, payments, shipments) = s.effects("ok-1").await;
    assert_eq!(
        (reservations.len(), payments.len(), shipments.len()),
        (1, 1, 1)
    );
    assert_eq!(reservations[0]["status"], "held");
    assert_eq!(s.available("sku-ok").await, 8);
    // the same order again: the existing one, no second checkout
    let (status, again) = s.place(&order("ok-1", "sku-ok", "tok_visa", "FR")).await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("completed"))
    );
    let (status, _) = s.place(&order("ok-1", "sku-ok", "tok_visa", "DE")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(s.available("sku-ok").await, 8);
}

#[tokio::test]
async fn bad_orders_are_refused_with_problems_and_nothing_is_placed() {
    let Some(s) = stack(10_000).await else { return };
    let mut bad_id = order("a.b", "sku", "tok_visa", "FR");
    let mut zero = order("zero-1", "sku", "tok_visa", "FR");
    zero["amount_cents"] = json!(0);
    let mut extra = order("extra-1", "sku", "tok_visa", "fr");
    extra["coupon"] = json!("x");
    bad_id["currency"] = json!("eur");
    for (body, status, pointer) in [
        (bad_id, StatusCode::UNPROCESSABLE_ENTITY, "/order_id"),
        (zero, StatusCode::UNPROCESSABLE_ENTITY, "/amount_cents"),
        (extra, StatusCode::UNPROCESSABLE_ENTITY, ""),
    ] {
        let (got, problem) = s.place(&body).await;
        assert_eq!(got, status, "{problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:tandem:problem:"),
            "{problem}"
        );
        assert!(
            problem.to_string().contains(pointer),
            "{pointer}: {problem}"
        );
    }
    let resp = s
        .http
        .post(format!("{}/orders", s.orders))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    for id in ["zero-1", "extra-1", "a.b"] {
        let resp = s
            .http
            .get(format!("{}/orders/{id}", s.orders))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{id}");
    }
}

#[tokio::test]
async fn each_refusal_compensates_the_earlier_steps_in_reverse_order() {
    let Some(s) = stack(10_000).await else { return };
    s.stock("sku-r", 10).await;
    s.stock("sku-short", 1).await;
    let cases = [
        // (order, sku, card, country, failing step, charges+refunds, forward events)
        (
            "short-1",
            "sku-short",
            "tok_visa",
            "FR",
            "reserve_inventory",
            0,
            vec!["placed"],
        ),
        (
            "declined-1",
            "sku-r",
            "tok_decline",
            "FR",
            "charge_payment",
            0,
            vec!["placed", "reserved"],
        ),
        (
            "nowhere-1",
            "sku-r",
            "tok_visa",
            "ZZ",
            "create_shipment",
            2,
            vec!["placed", "reserved", "charged"],
        ),
    ];
    for (id, sku, card, country, step, payments, forward) in cases {
        let (status, _) = s.place(&order(id, sku, card, country)).await;
        assert_eq!(status, StatusCode::CREATED);
        let view = s.settled(id).await;
        assert_eq!(view["status"], "compensated", "{id}: {view}");
        let mut want: Vec<&str> = forward;
        want.extend(["failed", "cancelled", "refunded", "released"]);
        assert_eq!(events(&view), want, "{id}");
        let failed = &view["timeline"][want.len() - 4];
        assert_eq!(failed["step"], step, "{id}: {failed}");
        let (reservations, charges, shipments) = s.effects(id).await;
        assert_eq!(charges.len(), payments, "{id}: {charges:?}");
        assert!(shipments.is_empty(), "{id}: {shipments:?}");
        assert!(
            reservations.iter().all(|r| r["status"] == "released"),
            "{id}"
        );
    }
    assert_eq!(
        (s.available("sku-r").await, s.available("sku-short").await),
        (10, 1)
    );
}

#[tokio::test]
async fn redelivered_and_republished_events_have_no_second_effect() {
    let Some(s) = stack(10_000).await else { return };
    s.stock("sku-d", 10).await;
    // the lost ack: inventory commits the reservation and does not acknowledge; the redelivery
    // finds the barrier's outcome
    s.inventory
        .fault(json!({ "order_id": "dup-1", "kind": "effect_then_503", "times": 2 }))
        .await;
    // a transient failure: payment naks twice, then charges
    s.payment
        .fault(json!({ "order_id": "dup-1", "kind": "transient", "times": 2 }))
        .await;
    s.place(&order("dup-1", "sku-d", "tok_visa", "FR")).await;
    let view = s.settled("dup-1").await;
    assert_eq!(events(&view), ["placed", "reserved", "charged", "booked"]);
    for served in [&s.inventory, &s.payment] {
        let (_, faults) = served.get("/faults").await;
        assert!(
            faults
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["remaining"] == 0),
            "every injected fault fired: {faults}"
        );
    }
    // every event of the order published again under a new message id (what the stream sees
    // after its duplicate window): the barrier answers, nothing happens twice
    for entry in view["timeline"].as_array().unwrap() {
        let kind = entry["event"].as_str().unwrap();
        let subject = format!("checkout.dup-1.{kind}");
        let msg =
            s.js.get_stream("CHECKOUT")
                .await
                .unwrap()
                .get_last_raw_message_by_subject(&subject)
                .await
                .unwrap();
        s.js.publish(subject, msg.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let again = s.await_events("dup-1", 8).await;
    assert_eq!(again.len(), 8, "the republished events are in the stream");
    let (reservations, payments, shipments) = s.effects("dup-1").await;
    assert_eq!(
        (reservations.len(), payments.len(), shipments.len()),
        (1, 1, 1)
    );
    assert_eq!(s.available("sku-d").await, 8);
    // and no event was emitted twice: the services' outboxes hold one row per event
    for served in [&s.inventory, &s.payment, &s.shipping] {
        assert_eq!(served.count("outbox").await, 1);
    }
}

#[tokio::test]
async fn a_late_action_after_a_timeout_has_no_effect() {
    let Some(s) = stack(1_000).await else { return };
    s.stock("sku-t", 10).await;
    // payment stalls past the entry point's step timeout: the order is failed by the timer
    s.payment
        .fault(json!({ "order_id": "late-1", "kind": "latency", "latency_ms": 3000, "times": 1 }))
        .await;
    s.place(&order("late-1", "sku-t", "tok_visa", "FR")).await;
    let view = s.settled("late-1").await;
    assert_eq!(view["status"], "compensated", "{view}");
    let failed = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "failed")
        .unwrap()
        .clone();
    assert_eq!(
        (failed["step"].as_str(), failed["reason"].as_str()),
        (Some("charge_payment"), Some("timeout"))
    );
    // the stalled charge arrives after its compensation: refused as hanging, no effect
    s.drained().await;
    let (status, origin): (i16, String) = sqlx::query_as(
        "SELECT status, origin FROM saga_barrier WHERE saga_id = 'late-1' AND step = 'charge_payment' AND op = 'action'",
    )
    .fetch_one(&s.payment.app.postgres().unwrap().pool)
    .await
    .unwrap();
    assert_eq!((status, origin.as_str()), (409, "compensation"));
    let (reservations, payments, shipments) = s.effects("late-1").await;
    assert!(
        payments.is_empty() && shipments.is_empty(),
        "{payments:?} {shipments:?}"
    );
    assert_eq!(reservations[0]["status"], "released");
    assert_eq!(s.available("sku-t").await, 10);
}

#[tokio::test]
async fn poison_events_go_to_the_dead_letter_subject_and_do_not_block_the_stream() {
    let Some(s) = stack(10_000).await else { return };
    s.stock("sku-p", 10).await;
    s.js.publish("checkout.p-1.shipped", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    s.js.publish("checkout.p-2.placed", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    s.place(&order("after-poison", "sku-p", "tok_visa", "FR"))
        .await;
    assert_eq!(s.settled("after-poison").await["status"], "completed");
    let dead = s.dead_letters(8).await;
    for consumer in ["inventory", "payment", "shipping", "orders"] {
        for (subject, why) in [
            ("checkout.p-1.shipped", "unknown event type"),
            ("checkout.p-2.placed", "malformed"),
        ] {
            assert!(
                dead.iter()
                    .any(|(c, s, r)| c == consumer && s == subject && r.contains(why)),
                "{consumer} {subject}: {dead:?}"
            );
        }
    }
}

impl Stack {
    /// The order's events in the stream, once there are `n`.
    async fn await_events(&self, id: &str, n: usize) -> Vec<tandem_kit::choreo::Entry> {
        for _ in 0..200 {
            let events = tandem_kit::choreo::timeline(&self.js, id).await.unwrap();
            if events.len() >= n {
                // give the consumers the time to see the republished events: they are
                // acknowledged when the stream's consumers have no pending deliveries
                self.drained().await;
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} events of {id}");
    }

    /// Every durable consumer has delivered and had acknowledged everything.
    async fn drained(&self) {
        let stream = self.js.get_stream("CHECKOUT").await.unwrap();
        for _ in 0..400 {
            let mut idle = true;
            for name in ["inventory", "payment", "shipping", "orders"] {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer(name).await.unwrap();
                let info = consumer.info().await.unwrap();
                idle &= info.num_pending == 0 && info.num_ack_pending == 0;
            }
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the consumers did not drain");
    }

    /// `(consumer, original subject, reason)` of the dead letters, once there are `n`.
    async fn dead_letters(&self, n: usize) -> Vec<(String, String, String)> {
        let stream = self.js.get_stream("CHECKOUT_DEAD").await.unwrap();
        for _ in 0..200 {
            let mut letters = Vec::new();
            let mut seq = 1;
            while let Ok(msg) = stream.get_raw_message(seq).await {
                let headers = msg.headers.clone();
                let get = |name: &str| headers.get(name).map(|v| v.to_string()).unwrap_or_default();
                let consumer = msg.subject.trim_start_matches("checkout_dead.").to_string();
                letters.push((
                    consumer,
                    get("Tandem-Original-Subject"),
                    get("Tandem-Dead-Reason"),
                ));
                seq += 1;
            }
            if letters.len() >= n {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} dead letters");
    }
}

#[tokio::test]
async fn checkouts_complete_across_a_restart_of_the_nats_server() {
    let Some(mut s) = stack(30_000).await else {
        return;
    };
    s.stock("sku-n", 100).await;
    let ids: Vec<String> = (0..8).map(|i| format!("nats-{i}")).collect();
    for id in &ids {
        let (status, _) = s.place(&order(id, "sku-n", "tok_visa", "FR")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // killed (SIGKILL) and started again on the same store while the checkouts run
    s.nats.restart().await;
    for id in &ids {
        assert_eq!(s.settled(id).await["status"], "completed", "{id}");
        let (reservations, payments, shipments) = s.effects(id).await;
        assert_eq!(
            (reservations.len(), payments.len(), shipments.len()),
            (1, 1, 1),
            "{id}"
        );
    }
    assert_eq!(s.available("sku-n").await, 100 - 2 * 8);
}

/// Rows of `order` in a database's barrier (None: no barrier table there) and outbox.
async fn kept(pool: &sqlx::PgPool, order: &str, barrier: bool) -> (Option<i64>, i64) {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(order)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let b = if barrier {
        Some(count("SELECT count(*) FROM saga_barrier WHERE saga_id = $1").await)
    } else {
        None
    };
    (
        b,
        count("SELECT count(*) FROM outbox WHERE order_id = $1").await,
    )
}

#[tokio::test]
async fn finished_orders_past_retention_are_forgotten_by_every_service_and_their_effects_stay() {
    // Retention of three seconds, a pass every 100 ms.
    let Some(s) = stack_with(10_000, |c| {
        c.order_retention_secs = 3;
        c.purge.purge_interval_ms = 100;
    })
    .await
    else {
        return;
    };
    s.stock("sku-f", 10).await;
    let (status, _) = s.place(&order("keep-1", "sku-f", "tok_visa", "FR")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = s
        .place(&order("gone-1", "sku-f", "tok_decline", "FR"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(s.settled("keep-1").await["status"], "completed");
    assert_eq!(s.settled("gone-1").await["status"], "compensated");
    let services = [
        ("inventory", &s.inventory.app.postgres().unwrap().pool),
        ("payment", &s.payment.app.postgres().unwrap().pool),
        ("shipping", &s.shipping.app.postgres().unwrap().pool),
    ];
    // Right after settling, every service still has the orders' barrier rows (the charge was
    // refused: payment recorded the refusal; shipping never acted on the declined one).
    for (name, pool) in services {
        let (barrier, _) = kept(pool, "keep-1", true).await;
        assert!(barrier.unwrap() >= 1, "{name}");
    }
    // Then retention: the orders are deleted, the `forgotten` events reach every service, and
    // every barrier and outbox row of both orders goes, in every database.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = vec![];
        for id in ["keep-1", "gone-1"] {
            for (name, pool) in services {
                let k = kept(pool, id, true).await;
                if k != (Some(0), 0) {
                    left.push(format!("{name} {id} {k:?}"));
                }
            }
            let k = kept(&s.orders_pool, id, false).await;
            if k != (None, 0) {
                left.push(format!("orders {id} {k:?}"));
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not forgotten within 30 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = s
        .http
        .get(format!("{}/orders/keep-1", s.orders))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The business rows are not the barrier's: the completed order's effects stay.
    let (reservations, payments, shipments) = s.effects("keep-1").await;
    assert_eq!(
        (reservations.len(), payments.len(), shipments.len()),
        (1, 1, 1)
    );
    assert_eq!(s.available("sku-f").await, 8);
}
