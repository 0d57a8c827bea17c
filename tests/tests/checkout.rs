//! The orchestrator with the three services in-process on ephemeral ports, real Postgres,
//! fresh databases per test.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::in_process;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_scenario_ends_as_expected() {
    let (stack, c) = in_process("demo", |_| {}).await;
    let outcomes = demo::run_all(&c, "t").await.unwrap();
    for o in &outcomes {
        assert!(
            o.passed(),
            "scenario {}: {:?}\n{}",
            o.name,
            o.failures,
            demo::timeline(&o.saga)
        );
    }
    // The reverse order, spelled out from the event log of the undeliverable checkout:
    let zz = &outcomes[2].saga;
    let order: Vec<&str> = zz["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "compensation_succeeded")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["create_shipment", "charge_payment", "reserve_inventory"]
    );
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scarce_stock_never_oversells() {
    let (stack, c) = in_process("scarce", |_| {}).await;
    c.set_stock("scarce", 10).await.unwrap();
    let watcher = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut min = i64::MAX;
            for _ in 0..200 {
                let s = c.stock("scarce").await.unwrap();
                min = min.min(s["available"].as_i64().unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            min
        })
    };
    let posts = (0..50).map(|i| {
        let c = c.clone();
        async move {
            let r = c
                .start_saga(
                    "checkout",
                    &checkout_input(&format!("scarce-{i}"), "scarce", 1, "tok_visa", "GB"),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{}", r.body);
            let id = r.body["id"].as_str().unwrap().to_string();
            c.settle(&id, 120).await.unwrap()
        }
    });
    let sagas = futures::future::join_all(posts).await;
    let completed = sagas.iter().filter(|s| s["status"] == "completed").count();
    let compensated = sagas
        .iter()
        .filter(|s| s["status"] == "compensated")
        .count();
    assert_eq!((completed, compensated), (10, 40));
    let stock = c.stock("scarce").await.unwrap();
    assert_eq!(stock["available"], 0);
    assert!(watcher.await.unwrap() >= 0, "stock went negative");
    // Exactly the completed orders are charged, each once, and nobody else keeps a charge.
    for s in &sagas {
        let order = s["input"]["order_id"].as_str().unwrap();
        let pay = c.payments(order).await.unwrap();
        let charges = pay.iter().filter(|p| p["kind"] == "charge").count();
        let refunds = pay.iter().filter(|p| p["kind"] == "refund").count();
        if s["status"] == "completed" {
            assert_eq!((charges, refunds), (1, 0), "{order}");
        } else {
            assert_eq!(charges, refunds, "{order}");
        }
    }
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_requests_never_charge_twice() {
    let (stack, c) = in_process("dupes", |_| {}).await;
    c.set_stock("dup", 100).await.unwrap();
    let input = checkout_input("dup-1", "dup", 1, "tok_visa", "GB");
    // The same Idempotency-Key three times at once: one saga.
    let posts = (0..3).map(|_| c.start_saga("checkout", &input, Some("client-key-1")));
    let replies = futures::future::join_all(posts).await;
    let ids: Vec<String> = replies
        .iter()
        .map(|r| {
            let r = r.as_ref().unwrap();
            assert!(
                r.status == 201 || r.status == 200,
                "{} {}",
                r.status,
                r.body
            );
            r.body["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.as_ref().unwrap().status == 201)
            .count(),
        1
    );
    let saga = c.settle(&ids[0], 60).await.unwrap();
    assert_eq!(saga["status"], "completed");

    // The same order under another key and the same body: the existing saga.
    let again = c
        .start_saga("checkout", &input, Some("client-key-2"))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.body["id"].as_str().unwrap()),
        (200, ids[0].as_str())
    );
    // The same order with a different body: 409 naming the saga.
    let mut other = input.clone();
    other["amount_cents"] = json!(1);
    let conflict = c
        .start_saga("checkout", &other, Some("client-key-3"))
        .await
        .unwrap();
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.body["saga_id"], ids[0].as_str());
    // The first key with a different body: 422.
    let reused = c
        .start_saga("checkout", &other, Some("client-key-1"))
        .await
        .unwrap();
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(
        reused.body["type"],
        "urn:tandem:problem:idempotency-key-reused"
    );

    let pay = c.payments("dup-1").await.unwrap();
    assert_eq!(
        pay.iter().filter(|p| p["kind"] == "charge").count(),
        1,
        "{pay:?}"
    );
    let list = c.get(&format!("{}/sagas", c.orchestrator)).await.unwrap();
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    stack.stop().await.unwrap();
}

async fn raw(
    c: &tandem_cli::client::Client,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Value) {
    let mut req = c.http().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", c.orchestrator),
    );
    if let Some(ct) = ctype {
        req = req.header("content-type", ct);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, ct, body)
}

/// (what, path, content type, body, expected status, pointer the problem must name)
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

/// Bad requests derived from the `good` checkout input, and the answer each must get.
#[allow(clippy::too_many_lines)] // a table of data: one bad request per entry
fn bad_requests(good: &Value) -> Vec<Case> {
    let json = Some("application/json");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut i = good.clone();
        f(&mut i);
        serde_json::to_vec(&json!({"definition": "checkout", "input": i})).unwrap()
    };
    vec![
        (
            "malformed JSON",
            "/sagas",
            json,
            b"{\"definition\": ".to_vec(),
            400,
            None,
        ),
        ("no content type", "/sagas", None, with(&|_| {}), 415, None),
        (
            "text/plain",
            "/sagas",
            Some("text/plain"),
            with(&|_| {}),
            415,
            None,
        ),
        (
            "unknown definition",
            "/sagas",
            json,
            br#"{"definition":"nope","input":{}}"#.to_vec(),
            422,
            Some("/definition"),
        ),
        (
            "missing input",
            "/sagas",
            json,
            br#"{"definition":"checkout"}"#.to_vec(),
            422,
            Some("/input"),
        ),
        (
            "unknown member",
            "/sagas",
            json,
            br#"{"definition":"checkout","input":{},"x":1}"#.to_vec(),
            422,
            None,
        ),
        (
            "missing order_id",
            "/sagas",
            json,
            with(&|i| {
                i.as_object_mut().unwrap().remove("order_id");
            }),
            422,
            Some("/input"),
        ),
        (
            "quantity 0",
            "/sagas",
            json,
            with(&|i| i["items"][0]["quantity"] = json!(0)),
            422,
            Some("/input/items/0/quantity"),
        ),
        (
            "amount negative",
            "/sagas",
            json,
            with(&|i| i["amount_cents"] = json!(-5)),
            422,
            Some("/input/amount_cents"),
        ),
        (
            "no items",
            "/sagas",
            json,
            with(&|i| i["items"] = json!([])),
            422,
            Some("/input/items"),
        ),
        (
            "bad country",
            "/sagas",
            json,
            with(&|i| i["shipping"]["address"]["country"] = json!("gb")),
            422,
            Some("/input/shipping/address/country"),
        ),
        (
            "missing card",
            "/sagas",
            json,
            with(&|i| i["payment"] = json!({})),
            422,
            Some("/input/payment"),
        ),
        (
            "too large",
            "/sagas",
            json,
            vec![b' '; 300 * 1024],
            413,
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_stores_nothing() {
    let (stack, c) = in_process("badinput", |_| {}).await;
    let json = Some("application/json");
    let good = checkout_input("bad-1", "sku", 1, "tok_visa", "GB");
    let cases = bad_requests(&good);
    for (what, path, ct, body, status, pointer) in cases {
        let (got, ctype, problem) = raw(&c, "POST", path, ct, body).await;
        assert_eq!(got, status, "{what}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{what}");
        assert_eq!(problem["status"], status, "{what}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:tandem:problem:"),
            "{what}"
        );
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
        if let Some(p) = pointer {
            let pointers = tandem_kit::testing::strings(&problem["errors"], "pointer");
            assert!(
                pointers.iter().any(|q| q.starts_with(p)),
                "{what}: {pointers:?} does not name {p}"
            );
        }
    }
    let (s, ct, _) = raw(&c, "PUT", "/sagas", json, b"{}".to_vec()).await;
    assert_eq!((s, ct.as_str()), (405, "application/problem+json"));
    let (s, _, _) = raw(
        &c,
        "GET",
        "/sagas/0196a0c0-0000-7000-8000-000000000000",
        None,
        vec![],
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = raw(&c, "GET", "/sagas/not-a-uuid", None, vec![]).await;
    assert_eq!(s, 400);
    let (s, _, _) = raw(&c, "GET", "/nowhere", None, vec![]).await;
    assert_eq!(s, 404);
    let (s, _, p) = raw(&c, "GET", "/sagas?status=bogus", None, vec![]).await;
    assert_eq!(s, 422, "{p}");
    let long_key = "k".repeat(256);
    let r = c
        .http()
        .post(format!("{}/sagas", c.orchestrator))
        .header("Idempotency-Key", long_key)
        .json(&json!({"definition": "checkout", "input": good}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Nothing stored.
    let list = c.get(&format!("{}/sagas", c.orchestrator)).await.unwrap();
    assert_eq!(list.body["items"], json!([]));
    stack.stop().await.unwrap();
}

/// A second definition, unrelated to checkout's shape: nothing about checkout is hard-coded.
/// An input of [`gift_card_definition`]'s sagas, paid with `tok_visa`.
fn gift_input(card: &str, sku: &str, value_cents: i64) -> Value {
    json!({"card_id": card, "sku": sku, "value_cents": value_cents, "token": "tok_visa"})
}

/// Store [`gift_card_definition`] `note` as `gift-card-{note}`, changed by `tweak`; it must be
/// accepted.
async fn define_gift_card(c: &Client, note: &str, tweak: impl FnOnce(&mut Value)) {
    let mut def = gift_card_definition(note);
    def["name"] = json!(format!("gift-card-{note}"));
    tweak(&mut def);
    let r = tandem_tests::post_definition(c, &def).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

fn gift_card_definition(note: &str) -> Value {
    json!({
        "name": "gift-card",
        "description": note,
        "business_key": "/card_id",
        "input_schema": {
            "type": "object", "required": ["card_id", "sku", "value_cents"],
            "properties": {
                "card_id": {"type": "string"}, "sku": {"type": "string"},
                "value_cents": {"type": "integer", "minimum": 1}, "token": {"type": "string"}
            }
        },
        "policy": {"max_attempts": 3, "backoff": {"initial_ms": 10, "max_ms": 50}},
        "steps": [
            {
                "name": "charge",
                "action": {"service": "payment", "method": "POST", "path": "/charges", "body": {
                    "order_id": {"$from": "/input/card_id"}, "customer_id": "gift",
                    "amount_cents": {"$from": "/input/value_cents"}, "currency": "USD",
                    "card_token": {"$from": "/input/token"}
                }},
                "compensation": {"service": "payment", "method": "POST", "path": "/refunds",
                    "body": {"order_id": {"$from": "/input/card_id"}}}
            },
            {
                "name": "take_card_stock",
                "action": {"service": "inventory", "method": "POST", "path": "/reservations", "body": {
                    "order_id": {"$from": "/input/card_id"},
                    "items": [{"sku": {"$from": "/input/sku"}, "quantity": 1}]
                }},
                "compensation": {"service": "inventory", "method": "POST", "path": "/reservations/release",
                    "body": {"order_id": {"$from": "/input/card_id"}}}
            }
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_definition_runs_and_versions_are_pinned() {
    let (stack, c) = in_process("seconddef", |_| {}).await;
    let post_def = async |d: Value| tandem_tests::post_definition(&c, &d).await;
    let v1 = post_def(gift_card_definition("v1")).await;
    assert_eq!(v1.status, 201, "{}", v1.body);
    assert_eq!(
        post_def(gift_card_definition("v1")).await.status,
        200,
        "same text, same version"
    );
    c.set_stock("gift-50", 1).await.unwrap();

    // Runs to completion: charge first, then stock.
    let input = gift_input("g1", "gift-50", 5000);
    let r = c.start_saga("gift-card", &input, None).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], v1.body["version"]);
    let s1 = c.settle(r.body["id"].as_str().unwrap(), 60).await.unwrap();
    assert_eq!(s1["status"], "completed", "{}", demo::timeline(&s1));
    assert!(s1["outputs"]["take_card_stock"]["reservation_id"].is_string());

    // A new version loads; a new saga uses it, and out of stock compensates the charge.
    let v2 = post_def(gift_card_definition("v2")).await;
    assert_eq!(v2.status, 201);
    assert_ne!(v2.body["version"], v1.body["version"]);
    let input = gift_input("g2", "gift-50", 5000);
    let r = c.start_saga("gift-card", &input, None).await.unwrap();
    assert_eq!(r.body["version"], v2.body["version"]);
    let s2 = c.settle(r.body["id"].as_str().unwrap(), 60).await.unwrap();
    assert_eq!(s2["status"], "compensated", "{}", demo::timeline(&s2));
    let pay = c.payments("g2").await.unwrap();
    assert_eq!(
        pay.iter().filter(|p| p["kind"] == "refund").count(),
        1,
        "{pay:?}"
    );
    // The first saga still reports the version it ran on.
    let again = c.wait_saga(s1["id"].as_str().unwrap(), 0).await.unwrap();
    assert_eq!(again["version"], v1.body["version"]);

    // A broken definition is rejected with pointers, nothing stored.
    let mut bad = gift_card_definition("bad");
    bad["steps"][1]["action"]["service"] = json!("warehouse");
    let r = post_def(bad).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/steps/1/action/service");
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_out_of_budget_parks_the_saga_until_retried() {
    let (stack, c) = in_process("parked", |_| {}).await;
    define_gift_card(&c, "parking", |def| {
        def["policy"]["compensation_max_attempts"] = json!(2);
    })
    .await;
    c.set_stock("gift-p", 0).await.unwrap(); // step 2 fails → compensate the charge
    // The refund fails 5 times: budget 2 → parked as failed.
    c.add_fault(
        "payment",
        &json!({"order_id": "p1", "op": "compensation", "kind": "transient", "times": 5}),
    )
    .await
    .unwrap();
    let input = gift_input("p1", "gift-p", 100);
    let id = tandem_tests::start(&c, "gift-card-parking", &input).await;
    let s = c.settle(&id, 60).await.unwrap();
    assert_eq!(s["status"], "failed", "{}", demo::timeline(&s));
    assert!(s["reason"].is_string());
    // The refund has not happened.
    let pay = c.payments("p1").await.unwrap();
    assert_eq!(pay.iter().filter(|p| p["kind"] == "refund").count(), 0);
    // Retry: budget reset (2 more attempts, 3 faults left → fails again), then once more.
    // `/retry` is the older name of `/resume`.
    let retry = |c: tandem_cli::client::Client, id: String| async move {
        c.send_json(
            reqwest::Method::POST,
            &format!("{}/sagas/{id}/retry", c.orchestrator),
            &json!({}),
        )
        .await
        .unwrap()
    };
    let r = retry(c.clone(), id.clone()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.settle(&id, 60).await.unwrap();
    assert_eq!(s["status"], "failed");
    let r = c.saga_action(&id, "resume", "frank").await.unwrap();
    assert_eq!(r.status, 202);
    let resumed = r.body["events"].as_array().unwrap().iter().rev();
    let by: Vec<&Value> = resumed
        .filter(|e| e["kind"] == "saga_retried")
        .map(|e| &e["detail"]["by"])
        .collect();
    assert_eq!(
        by,
        [&json!("frank"), &json!("anonymous")],
        "who resumed, latest first"
    );
    let s = c.settle(&id, 60).await.unwrap();
    assert_eq!(s["status"], "compensated", "{}", demo::timeline(&s));
    let pay = c.payments("p1").await.unwrap();
    assert_eq!(
        pay.iter().filter(|p| p["kind"] == "refund").count(),
        1,
        "{pay:?}"
    );
    // Retrying a compensated saga is refused.
    assert_eq!(retry(c.clone(), id.clone()).await.status, 409);
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_answers_are_polled_and_slow_calls_time_out() {
    let (stack, c) = in_process("polling", |_| {}).await;
    define_gift_card(&c, "timeouts", |def| {
        def["policy"] = json!({"timeout_ms": 300, "poll_interval_ms": 20, "deadline_ms": 10000, "max_attempts": 4,
                               "backoff": {"initial_ms": 10, "max_ms": 50}});
    })
    .await;
    c.set_stock("gift-t", 10).await.unwrap();
    // 425 three times from payment, then a slow inventory (1 s > 300 ms timeout) once.
    for (service, fault) in [
        (
            "payment",
            json!({"order_id": "t1", "kind": "in_progress", "times": 3}),
        ),
        (
            "inventory",
            json!({"order_id": "t1", "kind": "latency", "latency_ms": 1000, "times": 1}),
        ),
    ] {
        c.add_fault(service, &fault).await.unwrap();
    }
    let input = gift_input("t1", "gift-t", 100);
    let id = tandem_tests::start(&c, "gift-card-timeouts", &input).await;
    let s = c.settle(&id, 60).await.unwrap();
    let tl = demo::timeline(&s);
    assert_eq!(s["status"], "completed", "{tl}");
    assert_eq!(
        demo::count_events(&s, "step_in_progress", "charge"),
        3,
        "{tl}"
    );
    assert!(
        demo::count_events(&s, "step_retry_scheduled", "take_card_stock") >= 1,
        "{tl}"
    );
    // The slow call's effect happened once even though its answer was lost to the timeout.
    let res = c.reservations("t1").await.unwrap();
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(c.payments("t1").await.unwrap().len(), 1);
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_paginates_and_long_polls() {
    let (stack, c) = in_process("listing", |_| {}).await;
    c.set_stock("lst", 100).await.unwrap();
    let mut ids = vec![];
    for i in 0..5 {
        let card = if i % 2 == 0 {
            "tok_visa"
        } else {
            "tok_decline"
        };
        let input = checkout_input(&format!("lst-{i}"), "lst", 1, card, "GB");
        ids.push(tandem_tests::start(&c, "checkout", &input).await);
    }
    for id in &ids {
        let s = c.wait_saga(id, 30).await.unwrap();
        assert!(
            s["status"] == "completed" || s["status"] == "compensated",
            "long poll returned {}",
            s["status"]
        );
    }
    let sagas = async |query: String| {
        let url = format!("{}/sagas?{query}", c.orchestrator);
        c.get(&url).await.unwrap().body
    };
    let page1 = sagas("limit=2".into()).await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    assert_eq!(page1["items"][0]["id"], ids[4].as_str(), "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = sagas(format!("limit=2&cursor={cursor}")).await;
    assert_eq!(page2["items"][0]["id"], ids[2].as_str());
    let page3 = sagas(format!(
        "limit=2&cursor={}",
        page2["next_cursor"].as_str().unwrap()
    ))
    .await;
    assert_eq!(page3["items"].as_array().unwrap().len(), 1);
    assert!(page3["next_cursor"].is_null());
    let comp = sagas("status=compensated".into()).await;
    assert_eq!(comp["items"].as_array().unwrap().len(), 2);
    let s = c.wait_saga(&ids[0], 0).await.unwrap();
    assert_eq!(
        s["lease"]["owner"],
        Value::Null,
        "a finished saga holds no lease"
    );
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_beyond_the_active_limit_wait_for_a_slot_not_for_their_lease() {
    // One saga driven at a time and a 2-minute lease: a saga created while the slot is busy
    // must be handed back and claimed when the slot frees, not left until its lease expires.
    let (stack, c) = in_process("slots", |c| {
        c.max_active_sagas = 1;
        c.lease_ttl_ms = 120_000;
    })
    .await;
    c.set_stock("slots", 100).await.unwrap();
    let ids = tandem_tests::start_checkouts(&c, "slots", "slots", 6).await;
    for id in &ids {
        let s = c.settle(id, 30).await.unwrap();
        assert_eq!(s["status"], "completed", "{}", demo::timeline(&s));
    }
    stack.stop().await.unwrap();
}
