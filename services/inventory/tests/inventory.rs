//! Inventory against a real Postgres (a fresh database per test), served in-process on port 0:
//! business rules, the barrier (duplicates, null compensation, hanging), fault injection and the
//! no-oversell guarantee.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::testing::{Served, Store, assert_problem};

async fn spawn(store: Store) -> Served {
    Served::with_faults_on(store, &inventory::SPEC).await
}

/// The service with `available` units of SKU `a`.
async fn spawn_with_a(store: Store, available: i64) -> Served {
    let svc = spawn(store).await;
    set_stock(&svc, "a", available).await;
    svc
}

async fn set_stock(svc: &Served, sku: &str, available: i64) {
    let resp = svc
        .http
        .put(format!("{}/stock/{sku}", svc.url))
        .json(&json!({ "available": available }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// `(available, reserved)` of `sku`.
async fn stock(svc: &Served, sku: &str) -> (i64, i64) {
    let (s, b) = svc.get(&format!("/stock/{sku}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    (
        b["available"].as_i64().unwrap(),
        b["reserved"].as_i64().unwrap(),
    )
}

/// `sku`'s stock is `(available, reserved)` and `reservations` rows exist in all.
async fn assert_held(svc: &Served, sku: &str, want: (i64, i64), reservations: i64) {
    assert_eq!(stock(svc, sku).await, want);
    assert_eq!(svc.count("reservations").await, reservations);
}

/// [`release`], which must answer 200: its `released` flag.
async fn released(svc: &Served, key: &str, order: &str) -> Value {
    let (s, b) = release(svc, key, order).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["released"].clone()
}

/// An `items` list of one line.
fn one_line(sku: &str, quantity: i64) -> Value {
    json!([{ "sku": sku, "quantity": quantity }])
}

async fn reserve(svc: &Served, key: &str, order: &str, items: Value) -> (StatusCode, Value) {
    let body = json!({ "order_id": order, "items": items });
    svc.post("/reservations", Some(key), body).await
}

async fn release(svc: &Served, key: &str, order: &str) -> (StatusCode, Value) {
    svc.compensate("/reservations/release", key, order).await
}

async fn stock_is_set_and_read(store: Store) {
    let svc = spawn(store).await;
    set_stock(&svc, "apple", 7).await;
    assert_eq!(stock(&svc, "apple").await, (7, 0));
    set_stock(&svc, "apple", 3).await;
    assert_eq!(stock(&svc, "apple").await, (3, 0));
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
    assert_eq!(stock(&svc, "apple").await, (3, 0));
}

async fn reservation_holds_stock_and_is_listed(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    set_stock(&svc, "b", 5).await;
    let items = json!([{"sku": "b", "quantity": 2}, {"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 1}]);
    let (s, b) = reserve(&svc, "s1:reserve_inventory:action", "o-1", items).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "held");
    assert_eq!(b["order_id"], "o-1");
    assert_eq!(
        b["items"],
        json!([{"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 3}])
    );
    let rid = b["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(stock(&svc, "a").await, (7, 3));
    assert_eq!(stock(&svc, "b").await, (2, 3));

    let (s, list) = svc.get("/reservations?order_id=o-1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["reservation_id"], rid);
    assert_eq!(list[0]["status"], "held");
    assert_eq!(list[0]["saga_id"], "s1");
    assert!(list[0]["created_at"].is_string());

    let (s, b) = release(&svc, "s1:reserve_inventory:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["released"], true);
    assert_eq!(b["reservation_id"], rid);
    assert_eq!(stock(&svc, "a").await, (10, 0));
    assert_eq!(stock(&svc, "b").await, (5, 0));
    let (_, list) = svc.get("/reservations?order_id=o-1").await;
    assert_eq!(list[0]["status"], "released");

    // Duplicate compensation: the same answer, stock returned once.
    let (s, again) = release(&svc, "s1:reserve_inventory:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, b);
    assert_eq!(stock(&svc, "a").await, (10, 0));

    let (s, empty) = svc.get("/reservations?order_id=other").await;
    assert_eq!((s, empty), (StatusCode::OK, json!([])));
    let (s, b) = svc.get("/reservations").await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
}

async fn shortage_is_409_naming_the_sku_with_no_partial_effect(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    set_stock(&svc, "b", 1).await;
    let items = json!([{"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 2}]);
    let (s, b) = reserve(&svc, "s1:reserve:action", "o-1", items.clone()).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "insufficient-stock");
    assert_eq!(b["sku"], "b");
    assert_eq!(
        stock(&svc, "a").await,
        (10, 0),
        "a was decremented then rolled back"
    );
    assert_held(&svc, "b", (1, 0), 0).await;

    // The same key again: the same failure, even though stock is now sufficient.
    set_stock(&svc, "b", 100).await;
    let (s2, b2) = reserve(&svc, "s1:reserve:action", "o-1", items).await;
    assert_eq!((s2, &b2), (s, &b));

    // An unknown SKU is a shortage too.
    let (s, b) = reserve(&svc, "s2:reserve:action", "o-2", one_line("zzz", 1)).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "insufficient-stock");
    assert_eq!(b["sku"], "zzz");

    // Compensation of the failed action: success, no effect.
    assert_eq!(
        released(&svc, "s1:reserve:compensation", "o-1").await,
        false
    );
    assert_eq!(stock(&svc, "a").await, (10, 0));
    assert_eq!(stock(&svc, "b").await, (100, 0));
}

async fn bad_requests_are_4xx_problems_and_store_nothing(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    let good = json!({ "order_id": "o-1", "items": [{"sku": "a", "quantity": 1}] });

    svc.assert_keys_checked("/reservations", &good, "/reservations/release")
        .await;

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
    svc.assert_invalid("/reservations", "s1:reserve:action", &cases)
        .await;
    let comp = [(json!({}), "/order_id")];
    svc.assert_invalid("/reservations/release", "s1:reserve:compensation", &comp)
        .await;

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
    assert_eq!(stock(&svc, "a").await, (10, 0));

    // The key is still free: a valid request afterwards is served normally.
    let (s, _) = svc
        .post("/reservations", Some("s1:reserve:action"), good)
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

async fn duplicate_action_replays_the_first_outcome(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    let post_raw = async || {
        let body = json!({ "order_id": "o-1", "items": one_line("a", 2) });
        let url = format!("{}/reservations", svc.url);
        let req = svc
            .http
            .post(url)
            .header("Idempotency-Key", "s1:reserve:action");
        req.json(&body).send().await.unwrap()
    };
    let resp = post_raw().await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotency-replayed").is_none());
    let first: Value = resp.json().await.unwrap();
    let resp = post_raw().await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["idempotency-replayed"], "true");
    let second: Value = resp.json().await.unwrap();
    assert_eq!(first, second);
    assert_held(&svc, "a", (8, 2), 1).await;
}

/// The barrier runs the effect before it finds a key taken (and then rolls the effect back), so
/// a duplicate's effect may see a world the first request changed. The answer must still be the
/// first outcome: the success after the first took the last units, the shortage after the
/// stock was refilled.
async fn duplicate_replays_the_first_outcome_even_when_its_effect_would_differ(store: Store) {
    let svc = spawn_with_a(store, 3).await;
    let items = one_line("a", 3);
    let (s, first) = reserve(&svc, "s1:reserve:action", "o-1", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    // Nothing left: run again, the effect alone would be a shortage.
    let (s, again) = reserve(&svc, "s1:reserve:action", "o-1", items.clone()).await;
    assert_eq!((s, &again), (StatusCode::CREATED, &first));
    assert_eq!(stock(&svc, "a").await, (0, 3));

    let (s, refused) = reserve(&svc, "s2:reserve:action", "o-2", items.clone()).await;
    assert_problem(s, &refused, StatusCode::CONFLICT, "insufficient-stock");
    // Refilled: run again, the effect alone would now succeed.
    set_stock(&svc, "a", 10).await;
    let (s, again) = reserve(&svc, "s2:reserve:action", "o-2", items).await;
    assert_eq!((s, &again), (StatusCode::CONFLICT, &refused));
    assert_held(&svc, "a", (10, 3), 1).await;
}

async fn concurrent_duplicates_make_one_effect(store: Store) {
    let svc = spawn_with_a(store, 100).await;
    let calls = (0..12).map(|_| reserve(&svc, "s1:reserve:action", "o-1", one_line("a", 5)));
    let results = join_all(calls).await;
    let first = &results[0].1;
    for (s, b) in &results {
        assert_eq!(*s, StatusCode::CREATED, "{b}");
        assert_eq!(b, first);
    }
    assert_held(&svc, "a", (95, 5), 1).await;
}

async fn null_compensation_then_hanging_action_is_refused(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    assert_eq!(
        released(&svc, "s1:reserve:compensation", "o-1").await,
        false
    );

    let (s, b) = reserve(&svc, "s1:reserve:action", "o-1", one_line("a", 1)).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "hanging");
    assert_held(&svc, "a", (10, 0), 0).await;

    // Again, and the compensation again: the same answers.
    let (s2, b2) = reserve(&svc, "s1:reserve:action", "o-1", one_line("a", 1)).await;
    assert_eq!((s2, b2), (s, b));
    assert_eq!(
        released(&svc, "s1:reserve:compensation", "o-1").await,
        false
    );
    assert_eq!(stock(&svc, "a").await, (10, 0));
}

async fn effect_then_503_retried_makes_one_effect(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    svc.fault(json!({ "order_id": "o-1", "kind": "effect_then_503" }))
        .await;
    let items = one_line("a", 4);
    let (s, b) = reserve(&svc, "s1:reserve:action", "o-1", items.clone()).await;
    assert_problem(s, &b, StatusCode::SERVICE_UNAVAILABLE, "injected-fault");
    assert_eq!(stock(&svc, "a").await, (6, 4), "the effect was committed");

    let (s, b) = reserve(&svc, "s1:reserve:action", "o-1", items).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "held");
    assert_eq!(stock(&svc, "a").await, (6, 4), "one effect");
    assert_eq!(svc.count("reservations").await, 1);

    // The compensation can be hit too.
    svc.fault(json!({ "order_id": "o-1", "op": "compensation", "kind": "effect_then_503" }))
        .await;
    let (s, _) = release(&svc, "s1:reserve:compensation", "o-1").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stock(&svc, "a").await, (10, 0));
    assert_eq!(released(&svc, "s1:reserve:compensation", "o-1").await, true);
    assert_eq!(stock(&svc, "a").await, (10, 0));
}

async fn transient_and_in_progress_faults_are_scoped_and_counted(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    svc.fault(json!({ "order_id": "o-1", "kind": "transient", "times": 2 }))
        .await;
    svc.fault(json!({ "key": "s3:reserve:action", "kind": "in_progress", "times": 2 }))
        .await;
    let items = one_line("a", 1);

    // Another order is not disturbed.
    let (s, _) = reserve(&svc, "s2:reserve:action", "o-2", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED);

    for _ in 0..2 {
        let (s, b) = reserve(&svc, "s1:reserve:action", "o-1", items.clone()).await;
        assert_problem(s, &b, StatusCode::INTERNAL_SERVER_ERROR, "injected-fault");
    }
    assert_eq!(
        svc.count("saga_barrier").await,
        1,
        "no barrier row for the transient failures"
    );
    assert_eq!(stock(&svc, "a").await, (9, 1));
    let (s, _) = reserve(&svc, "s1:reserve:action", "o-1", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED);

    for _ in 0..2 {
        let (s, b) = reserve(&svc, "s3:reserve:action", "o-3", items.clone()).await;
        assert_problem(s, &b, StatusCode::TOO_EARLY, "in-progress");
    }
    assert_eq!(stock(&svc, "a").await, (8, 2));
    let (s, _) = reserve(&svc, "s3:reserve:action", "o-3", items).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(stock(&svc, "a").await, (7, 3));

    let (_, faults) = svc.get("/faults").await;
    let faults = faults.as_array().unwrap();
    assert_eq!(faults.len(), 2);
    assert!(faults.iter().all(|f| f["remaining"] == 0));
}

async fn latency_fault_delays_only_its_scope(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    svc.fault(json!({ "order_id": "o-slow", "kind": "latency", "latency_ms": 400 }))
        .await;
    let items = one_line("a", 1);
    let started = Instant::now();
    let (s, _) = reserve(&svc, "s1:reserve:action", "o-fast", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let fast = started.elapsed();
    let started = Instant::now();
    let (s, _) = reserve(&svc, "s2:reserve:action", "o-slow", items.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let slow = started.elapsed();
    assert!(slow >= Duration::from_millis(400), "{slow:?}");
    assert!(fast < Duration::from_millis(400), "{fast:?}");
    // Used up: the next call is not delayed.
    let started = Instant::now();
    reserve(&svc, "s3:reserve:action", "o-slow", items).await;
    assert!(started.elapsed() < Duration::from_millis(400));
}

async fn fault_endpoints_validate_list_and_delete(store: Store) {
    let svc = spawn(store).await;
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

    let (_, deleted) = svc.delete("/faults?order_id=o-1").await;
    assert_eq!(deleted["deleted"], 1);
    let (_, list) = svc.get("/faults").await;
    assert_eq!(list[0]["order_id"], "o-2");
    let (_, deleted) = svc.delete("/faults").await;
    assert_eq!(deleted["deleted"], 1);
    let (_, list) = svc.get("/faults").await;
    assert_eq!(list, json!([]));

    let off = Served::start_on(store, &inventory::SPEC, |_| {}).await;
    let (s, _) = off
        .post(
            "/faults",
            None,
            json!({ "order_id": "o-1", "kind": "transient" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn fifty_concurrent_reservations_never_oversell(store: Store) {
    let svc = spawn(store).await;
    set_stock(&svc, "scarce", 10).await;
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
        reserve(svc, &key, &order, one_line("scarce", 1)).await
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
    assert_eq!(stock(svc, "scarce").await, (0, 10));
    assert_eq!(svc.count("reservations").await, 10);
    assert!(watcher.await.unwrap() >= 1);
}

async fn healthz_answers(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = svc.get("/healthz").await;
    assert_eq!((s, &b["status"]), (StatusCode::OK, &json!("ok")));
    let (s, b) = svc.get("/no/such/route").await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not-found");
}

/// Retention on either store: `POST /barrier/forget` deletes the named sagas' barrier rows only
/// (the array bound portably), and the age backstop deletes rows older than its age only (times
/// compared portably), business rows untouched.
async fn retention_forgets_named_sagas_and_old_rows(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    for i in 1..=3 {
        let (s, b) = reserve(
            &svc,
            &format!("s{i}:reserve:action"),
            "o-1",
            one_line("a", 1),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, b) = svc
        .post(
            "/barrier/forget",
            None,
            json!({ "saga_ids": ["s1", "nobody"] }),
        )
        .await;
    assert_eq!((s, &b["forgotten"]), (StatusCode::OK, &json!(1)), "{b}");
    assert_eq!(svc.counts(["saga_barrier", "reservations"]).await, [2, 3]);
    // s2's row is two days old, s3's is new: a one-day backstop takes s2's alone.
    tandem_kit::store::query("UPDATE saga_barrier SET created_at = $1 WHERE saga_id = $2")
        .bind(chrono::Utc::now() - chrono::Duration::days(2))
        .bind("s2")
        .execute(&svc.app.db)
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    let n = tandem_kit::retention::purge_backstop(svc.app.db.clone(), day, 1000)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(svc.counts(["saga_barrier", "reservations"]).await, [1, 3]);
    // s3 is still known: its duplicate replays.
    let (s, _) = reserve(&svc, "s3:reserve:action", "o-1", one_line("a", 1)).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_held(&svc, "a", (7, 3), 3).await;
}

/// Defect: a NUL character (which Postgres cannot store) answered 500 where it reached the
/// database unchecked. Every string — query and path parameters, body values — is a 422 naming
/// it, and nothing is stored.
async fn a_nul_anywhere_is_422_naming_it_and_stores_nothing(store: Store) {
    let svc = spawn_with_a(store, 10).await;
    for (path, pointer) in [
        ("/reservations?order_id=%00", "/query/order_id"),
        ("/reservations?order_id=o%00-1", "/query/order_id"),
        ("/stock/a%00", "/path/sku"),
    ] {
        let (s, b) = svc.get(path).await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        assert_eq!(b["errors"][0]["pointer"], pointer, "{path}: {b}");
    }
    let good = one_line("a", 1);
    for (order, items, pointer) in [
        ("o\u{0}", good.clone(), "/order_id"),
        ("o-1", one_line("a\u{0}", 1), "/items/0/sku"),
    ] {
        let (s, b) = reserve(&svc, "s1:reserve:action", order, items).await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        assert_eq!(b["errors"][0]["pointer"], pointer, "{b}");
    }
    let (s, b) = release(&svc, "s1:reserve:compensation", "\u{0}").await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    assert_eq!(svc.counts(["saga_barrier", "reservations"]).await, [0, 0]);
    assert_eq!(stock(&svc, "a").await, (10, 0));
}

/// Defect: a duplicate that the barrier replays was logged at ERROR (the internal-error problem
/// logged itself when built, before the barrier found the stored outcome). The first request
/// is held between its effect and its commit, so the second's effect runs into the first's rows
/// (a unique violation) and is replayed: the same status and body, and no ERROR line.
#[tokio::test]
async fn a_replayed_duplicate_is_not_logged_as_an_error() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    // This test's runtime has one thread: the server's tasks log through this subscriber too.
    let _guard = tracing::subscriber::set_default(subscriber);
    // A callsite first hit by a parallel test before this subscriber existed may have cached
    // "nobody listens"; recompute.
    tracing::callsite::rebuild_interest_cache();
    // A long lock_timeout: the second request must wait for the first, however slow the machine.
    let svc = &Served::start(&inventory::SPEC, |c| {
        c.fault_injection = tandem_kit::faults::Switch::On;
        c.lock_timeout_ms = 60_000;
    })
    .await;
    set_stock(svc, "a", 10).await;
    let (key, items) = ("s1:reserve:action", one_line("a", 2));
    let mut pause = svc.app.hooks.pause_before_commit(key);
    let second = async {
        pause.reached().await;
        let release = async {
            wait_for_a_lock_wait(svc).await;
            pause.release();
        };
        tokio::join!(reserve(svc, key, "o-1", items.clone()), release).0
    };
    let (first, second) = tokio::join!(reserve(svc, key, "o-1", items.clone()), second);
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    assert_eq!(second, first);
    assert_eq!(stock(svc, "a").await, (8, 2));
    assert_eq!(svc.count("reservations").await, 1);
    let text = log.text();
    assert!(
        text.contains("the effect failed on a duplicate; replaying the stored outcome"),
        "the duplicate did not take the replay path:\n{text}"
    );
    assert!(!text.contains("ERROR"), "an ERROR was logged:\n{text}");
}

/// Until some backend of the service's database waits on a lock.
async fn wait_for_a_lock_wait(svc: &Served) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&svc.app.postgres().unwrap().pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no request ever waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A log captured in memory.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

/// The OpenAPI document and the router agree, fault injection on and off.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    tandem_kit::service_tests::assert_documented(&inventory::SPEC).await;
}

// The conformance suite: each test above that takes a `Store`, on Postgres and on SQLite.
tandem_kit::on_both_stores!(
    stock_is_set_and_read,
    reservation_holds_stock_and_is_listed,
    shortage_is_409_naming_the_sku_with_no_partial_effect,
    bad_requests_are_4xx_problems_and_store_nothing,
    duplicate_action_replays_the_first_outcome,
    duplicate_replays_the_first_outcome_even_when_its_effect_would_differ,
    concurrent_duplicates_make_one_effect,
    null_compensation_then_hanging_action_is_refused,
    effect_then_503_retried_makes_one_effect,
    transient_and_in_progress_faults_are_scoped_and_counted,
    latency_fault_delays_only_its_scope,
    fault_endpoints_validate_list_and_delete,
    fifty_concurrent_reservations_never_oversell,
    healthz_answers,
    retention_forgets_named_sagas_and_old_rows,
    a_nul_anywhere_is_422_naming_it_and_stores_nothing,
);
