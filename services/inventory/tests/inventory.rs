//! Inventory against a real Postgres (a fresh database per test), served in-process on port 0:
//! business rules, the barrier (duplicates, null compensation, hanging), fault injection and the
//! no-oversell guarantee.

use std::ops::Deref;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::faults::Switch;
use tandem_kit::testing::{Served, assert_problem};

struct Svc(Served);

impl Deref for Svc {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

async fn spawn_with(faults: Switch) -> Svc {
    Svc(Served::start(&inventory::SPEC, |c| c.fault_injection = faults).await)
}

async fn spawn() -> Svc {
    spawn_with(Switch::On).await
}

impl Svc {
    async fn set_stock(&self, sku: &str, available: i64) {
        let resp = self
            .http
            .put(format!("{}/stock/{sku}", self.url))
            .json(&json!({ "available": available }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    async fn stock(&self, sku: &str) -> (i64, i64) {
        let (s, b) = self.get(&format!("/stock/{sku}")).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        (
            b["available"].as_i64().unwrap(),
            b["reserved"].as_i64().unwrap(),
        )
    }

    async fn reserve(&self, key: &str, order: &str, items: Value) -> (StatusCode, Value) {
        self.post(
            "/reservations",
            Some(key),
            json!({ "order_id": order, "items": items }),
        )
        .await
    }

    async fn release(&self, key: &str, order: &str) -> (StatusCode, Value) {
        self.post(
            "/reservations/release",
            Some(key),
            json!({ "order_id": order }),
        )
        .await
    }
}

#[tokio::test]
async fn stock_is_set_and_read() {
    let svc = spawn().await;
    svc.set_stock("apple", 7).await;
    assert_eq!(svc.stock("apple").await, (7, 0));
    svc.set_stock("apple", 3).await;
    assert_eq!(svc.stock("apple").await, (3, 0));
    let (s, b) = svc.get("/stock/pear").await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not-found");

    let resp = svc
        .http
        .put(format!("{}/stock/apple", svc.url))
        .json(&json!({ "available": -1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["errors"][0]["pointer"], "/available");
    assert_eq!(svc.stock("apple").await, (3, 0));
}

#[tokio::test]
async fn reservation_holds_stock_and_is_listed() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    svc.set_stock("b", 5).await;
    let items = json!([{"sku": "b", "quantity": 2}, {"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 1}]);
    let (s, b) = svc
        .reserve("s1:reserve_inventory:action", "o-1", items)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "held");
    assert_eq!(b["order_id"], "o-1");
    assert_eq!(
        b["items"],
        json!([{"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 3}])
    );
    let rid = b["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(svc.stock("a").await, (7, 3));
    assert_eq!(svc.stock("b").await, (2, 3));

    let (s, list) = svc.get("/reservations?order_id=o-1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["reservation_id"], rid);
    assert_eq!(list[0]["status"], "held");
    assert_eq!(list[0]["saga_id"], "s1");
    assert!(list[0]["created_at"].is_string());

    let (s, b) = svc
        .release("s1:reserve_inventory:compensation", "o-1")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["released"], true);
    assert_eq!(b["reservation_id"], rid);
    assert_eq!(svc.stock("a").await, (10, 0));
    assert_eq!(svc.stock("b").await, (5, 0));
    let (_, list) = svc.get("/reservations?order_id=o-1").await;
    assert_eq!(list[0]["status"], "released");

    // Duplicate compensation: the same answer, stock returned once.
    let (s, again) = svc
        .release("s1:reserve_inventory:compensation", "o-1")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, b);
    assert_eq!(svc.stock("a").await, (10, 0));

    let (s, empty) = svc.get("/reservations?order_id=other").await;
    assert_eq!((s, empty), (StatusCode::OK, json!([])));
    let (s, b) = svc.get("/reservations").await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
}

#[tokio::test]
async fn shortage_is_409_naming_the_sku_with_no_partial_effect() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    svc.set_stock("b", 1).await;
    let items = json!([{"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 2}]);
    let (s, b) = svc.reserve("s1:reserve:action", "o-1", items.clone()).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "insufficient-stock");
    assert_eq!(b["sku"], "b");
    assert_eq!(
        svc.stock("a").await,
        (10, 0),
        "a was decremented then rolled back"
    );
    assert_eq!(svc.stock("b").await, (1, 0));
    assert_eq!(svc.count("reservations").await, 0);

    // The same key again: the same failure, even though stock is now sufficient.
    svc.set_stock("b", 100).await;
    let (s2, b2) = svc.reserve("s1:reserve:action", "o-1", items).await;
    assert_eq!((s2, &b2), (s, &b));

    // An unknown SKU is a shortage too.
    let (s, b) = svc
        .reserve(
            "s2:reserve:action",
            "o-2",
            json!([{"sku": "zzz", "quantity": 1}]),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "insufficient-stock");
    assert_eq!(b["sku"], "zzz");

    // Compensation of the failed action: success, no effect.
    let (s, b) = svc.release("s1:reserve:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["released"], false);
    assert_eq!(svc.stock("a").await, (10, 0));
    assert_eq!(svc.stock("b").await, (100, 0));
}

#[tokio::test]
async fn bad_requests_are_4xx_problems_and_store_nothing() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    let good = json!({ "order_id": "o-1", "items": [{"sku": "a", "quantity": 1}] });

    let (s, b) = svc.post("/reservations", None, good.clone()).await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");
    for key in ["nope", "s1:Bad:action", "s1:step:undo", "a:b:c:action"] {
        let (s, b) = svc.post("/reservations", Some(key), good.clone()).await;
        assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");
    }
    let (s, b) = svc
        .post(
            "/reservations",
            Some("s1:reserve:compensation"),
            good.clone(),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");
    let (s, b) = svc
        .post(
            "/reservations/release",
            Some("s1:reserve:action"),
            json!({"order_id": "o-1"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");

    let cases = [
        (
            json!({ "items": [{"sku": "a", "quantity": 1}] }),
            "/order_id",
        ),
        (
            json!({ "order_id": "", "items": [{"sku": "a", "quantity": 1}] }),
            "/order_id",
        ),
        (json!({ "order_id": "o", "items": [] }), "/items"),
        (
            json!({ "order_id": "o", "items": [{"sku": "a", "quantity": 0}] }),
            "/items/0/quantity",
        ),
        (
            json!({ "order_id": "o", "items": [{"sku": "a", "quantity": "1"}] }),
            "/items/0/quantity",
        ),
        (
            json!({ "order_id": "o", "items": [{"sku": "a", "quantity": 1.5}] }),
            "/items/0/quantity",
        ),
        (
            json!({ "order_id": "o", "items": [{"sku": "", "quantity": 1}] }),
            "/items/0/sku",
        ),
        (
            json!({ "order_id": "o", "items": [{"quantity": 1}] }),
            "/items/0/sku",
        ),
    ];
    for (body, pointer) in cases {
        let (s, b) = svc
            .post("/reservations", Some("s1:reserve:action"), body.clone())
            .await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        assert_eq!(b["errors"][0]["pointer"], pointer, "{body} → {b}");
    }
    let (s, b) = svc
        .post(
            "/reservations/release",
            Some("s1:reserve:compensation"),
            json!({}),
        )
        .await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");

    // Malformed JSON, wrong content type.
    let resp = svc
        .http
        .post(format!("{}/reservations", svc.url))
        .header("Idempotency-Key", "s1:reserve:action")
        .header("content-type", "application/json")
        .body("{\"order_id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = svc
        .http
        .post(format!("{}/reservations", svc.url))
        .header("Idempotency-Key", "s1:reserve:action")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(svc.count("saga_barrier").await, 0);
    assert_eq!(svc.count("reservations").await, 0);
    assert_eq!(svc.stock("a").await, (10, 0));

    // The key is still free: a valid request afterwards is served normally.
    let (s, _) = svc
        .post("/reservations", Some("s1:reserve:action"), good)
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn duplicate_action_replays_the_first_outcome() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    let items = json!([{"sku": "a", "quantity": 2}]);
    let resp = svc
        .http
        .post(format!("{}/reservations", svc.url))
        .header("Idempotency-Key", "s1:reserve:action")
        .json(&json!({ "order_id": "o-1", "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotency-replayed").is_none());
    let first: Value = resp.json().await.unwrap();
    let resp = svc
        .http
        .post(format!("{}/reservations", svc.url))
        .header("Idempotency-Key", "s1:reserve:action")
        .json(&json!({ "order_id": "o-1", "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["idempotency-replayed"], "true");
    let second: Value = resp.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(svc.stock("a").await, (8, 2));
    assert_eq!(svc.count("reservations").await, 1);
}

/// The barrier runs the effect before it finds a key taken (and then rolls the effect back), so
/// a duplicate's effect may see a world the first request changed. The answer must still be the
/// first outcome: the success after the first took the last units, the shortage after the
/// stock was refilled.
#[tokio::test]
async fn duplicate_replays_the_first_outcome_even_when_its_effect_would_differ() {
    let svc = spawn().await;
    svc.set_stock("a", 3).await;
    let items = json!([{"sku": "a", "quantity": 3}]);
    let (s, first) = svc.reserve("s1:reserve:action", "o-1", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    // Nothing left: run again, the effect alone would be a shortage.
    let (s, again) = svc.reserve("s1:reserve:action", "o-1", items.clone()).await;
    assert_eq!((s, &again), (StatusCode::CREATED, &first));
    assert_eq!(svc.stock("a").await, (0, 3));

    let (s, refused) = svc.reserve("s2:reserve:action", "o-2", items.clone()).await;
    assert_problem(s, &refused, StatusCode::CONFLICT, "insufficient-stock");
    // Refilled: run again, the effect alone would now succeed.
    svc.set_stock("a", 10).await;
    let (s, again) = svc.reserve("s2:reserve:action", "o-2", items).await;
    assert_eq!((s, &again), (StatusCode::CONFLICT, &refused));
    assert_eq!(svc.stock("a").await, (10, 3));
    assert_eq!(svc.count("reservations").await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_make_one_effect() {
    let svc = spawn().await;
    svc.set_stock("a", 100).await;
    let calls = (0..12).map(|_| {
        svc.reserve(
            "s1:reserve:action",
            "o-1",
            json!([{"sku": "a", "quantity": 5}]),
        )
    });
    let results = join_all(calls).await;
    let first = &results[0].1;
    for (s, b) in &results {
        assert_eq!(*s, StatusCode::CREATED, "{b}");
        assert_eq!(b, first);
    }
    assert_eq!(svc.stock("a").await, (95, 5));
    assert_eq!(svc.count("reservations").await, 1);
}

#[tokio::test]
async fn null_compensation_then_hanging_action_is_refused() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    let (s, b) = svc.release("s1:reserve:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["released"], false);

    let (s, b) = svc
        .reserve(
            "s1:reserve:action",
            "o-1",
            json!([{"sku": "a", "quantity": 1}]),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "hanging");
    assert_eq!(svc.stock("a").await, (10, 0));
    assert_eq!(svc.count("reservations").await, 0);

    // Again, and the compensation again: the same answers.
    let (s2, b2) = svc
        .reserve(
            "s1:reserve:action",
            "o-1",
            json!([{"sku": "a", "quantity": 1}]),
        )
        .await;
    assert_eq!((s2, b2), (s, b));
    let (s, b) = svc.release("s1:reserve:compensation", "o-1").await;
    assert_eq!((s, &b["released"]), (StatusCode::OK, &json!(false)));
    assert_eq!(svc.stock("a").await, (10, 0));
}

#[tokio::test]
async fn effect_then_503_retried_makes_one_effect() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    svc.fault(json!({ "order_id": "o-1", "kind": "effect_then_503" }))
        .await;
    let items = json!([{"sku": "a", "quantity": 4}]);
    let (s, b) = svc.reserve("s1:reserve:action", "o-1", items.clone()).await;
    assert_problem(s, &b, StatusCode::SERVICE_UNAVAILABLE, "injected-fault");
    assert_eq!(svc.stock("a").await, (6, 4), "the effect was committed");

    let (s, b) = svc.reserve("s1:reserve:action", "o-1", items).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "held");
    assert_eq!(svc.stock("a").await, (6, 4), "one effect");
    assert_eq!(svc.count("reservations").await, 1);

    // The compensation can be hit too.
    svc.fault(json!({ "order_id": "o-1", "op": "compensation", "kind": "effect_then_503" }))
        .await;
    let (s, _) = svc.release("s1:reserve:compensation", "o-1").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(svc.stock("a").await, (10, 0));
    let (s, b) = svc.release("s1:reserve:compensation", "o-1").await;
    assert_eq!((s, &b["released"]), (StatusCode::OK, &json!(true)));
    assert_eq!(svc.stock("a").await, (10, 0));
}

#[tokio::test]
async fn transient_and_in_progress_faults_are_scoped_and_counted() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    svc.fault(json!({ "order_id": "o-1", "kind": "transient", "times": 2 }))
        .await;
    svc.fault(json!({ "key": "s3:reserve:action", "kind": "in_progress", "times": 2 }))
        .await;
    let items = json!([{"sku": "a", "quantity": 1}]);

    // Another order is not disturbed.
    let (s, _) = svc.reserve("s2:reserve:action", "o-2", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED);

    for _ in 0..2 {
        let (s, b) = svc.reserve("s1:reserve:action", "o-1", items.clone()).await;
        assert_problem(s, &b, StatusCode::INTERNAL_SERVER_ERROR, "injected-fault");
    }
    assert_eq!(
        svc.count("saga_barrier").await,
        1,
        "no barrier row for the transient failures"
    );
    assert_eq!(svc.stock("a").await, (9, 1));
    let (s, _) = svc.reserve("s1:reserve:action", "o-1", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED);

    for _ in 0..2 {
        let (s, b) = svc.reserve("s3:reserve:action", "o-3", items.clone()).await;
        assert_problem(s, &b, StatusCode::TOO_EARLY, "in-progress");
    }
    assert_eq!(svc.stock("a").await, (8, 2));
    let (s, _) = svc.reserve("s3:reserve:action", "o-3", items).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(svc.stock("a").await, (7, 3));

    let (_, faults) = svc.get("/faults").await;
    let faults = faults.as_array().unwrap();
    assert_eq!(faults.len(), 2);
    assert!(faults.iter().all(|f| f["remaining"] == 0));
}

#[tokio::test]
async fn latency_fault_delays_only_its_scope() {
    let svc = spawn().await;
    svc.set_stock("a", 10).await;
    svc.fault(json!({ "order_id": "o-slow", "kind": "latency", "latency_ms": 400 }))
        .await;
    let items = json!([{"sku": "a", "quantity": 1}]);
    let started = Instant::now();
    let (s, _) = svc
        .reserve("s1:reserve:action", "o-fast", items.clone())
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let fast = started.elapsed();
    let started = Instant::now();
    let (s, _) = svc
        .reserve("s2:reserve:action", "o-slow", items.clone())
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let slow = started.elapsed();
    assert!(slow >= Duration::from_millis(400), "{slow:?}");
    assert!(fast < Duration::from_millis(400), "{fast:?}");
    // Used up: the next call is not delayed.
    let started = Instant::now();
    svc.reserve("s3:reserve:action", "o-slow", items).await;
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn fault_endpoints_validate_list_and_delete() {
    let svc = spawn().await;
    for (spec, pointer) in [
        (json!({ "kind": "transient" }), "/order_id"),
        (
            json!({ "order_id": "o", "key": "s:a:action", "kind": "transient" }),
            "/order_id",
        ),
        (json!({ "order_id": "o", "kind": "latency" }), "/latency_ms"),
        (
            json!({ "order_id": "o", "kind": "transient", "times": 0 }),
            "/times",
        ),
        (json!({ "order_id": "o", "kind": "explode" }), "/kind"),
        (json!({ "key": "bad key", "kind": "transient" }), "/key"),
    ] {
        let (s, b) = svc.post("/faults", None, spec.clone()).await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        assert_eq!(b["errors"][0]["pointer"], pointer, "{spec} → {b}");
    }
    let (s, f) = svc
        .post(
            "/faults",
            None,
            json!({ "order_id": "o-1", "kind": "transient", "op": "any" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(f["id"].is_string());
    assert_eq!(f["times"], 1);
    svc.fault(json!({ "order_id": "o-2", "kind": "in_progress", "times": 3 }))
        .await;
    let (_, list) = svc.get("/faults").await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    let resp = svc
        .http
        .delete(format!("{}/faults?order_id=o-1", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["deleted"], 1);
    let (_, list) = svc.get("/faults").await;
    assert_eq!(list[0]["order_id"], "o-2");
    let resp = svc
        .http
        .delete(format!("{}/faults", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["deleted"], 1);
    let (_, list) = svc.get("/faults").await;
    assert_eq!(list, json!([]));

    let off = spawn_with(Switch::Off).await;
    let (s, _) = off
        .post(
            "/faults",
            None,
            json!({ "order_id": "o-1", "kind": "transient" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn fifty_concurrent_reservations_never_oversell() {
    let svc = spawn().await;
    svc.set_stock("scarce", 10).await;
    let watcher = {
        let http = svc.http.clone();
        let url = format!("{}/stock/scarce", svc.url);
        tokio::spawn(async move {
            let mut samples = 0;
            loop {
                let b: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
                let (available, reserved) = (
                    b["available"].as_i64().unwrap(),
                    b["reserved"].as_i64().unwrap(),
                );
                assert!(available >= 0 && available + reserved == 10, "{b}");
                samples += 1;
                if reserved == 10 {
                    return samples;
                }
            }
        })
    };
    let svc = &svc;
    let calls = (0..50).map(|i| async move {
        let (key, order) = (format!("s{i}:reserve:action"), format!("o-{i}"));
        svc.reserve(&key, &order, json!([{"sku": "scarce", "quantity": 1}]))
            .await
    });
    let results = join_all(calls).await;
    let ok = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let short = results
        .iter()
        .filter(|(s, b)| {
            *s == StatusCode::CONFLICT && b["type"] == "urn:tandem:problem:insufficient-stock"
        })
        .count();
    assert_eq!((ok, short), (10, 40));
    assert_eq!(svc.stock("scarce").await, (0, 10));
    assert_eq!(svc.count("reservations").await, 10);
    assert!(watcher.await.unwrap() >= 1);
}

#[tokio::test]
async fn healthz_answers() {
    let svc = spawn().await;
    let (s, b) = svc.get("/healthz").await;
    assert_eq!((s, &b["status"]), (StatusCode::OK, &json!("ok")));
    let (s, b) = svc.get("/no/such/route").await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not-found");
}
