//! Shipping against a real Postgres (a fresh database per test), served in-process on port 0:
//! shipments, the undeliverable destination, cancellation, the barrier and fault injection.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::testing::{Served, Store, assert_problem};

async fn spawn(store: Store) -> Served {
    Served::with_faults_on(store, &shipping::SPEC).await
}

async fn ship(svc: &Served, key: &str, order: &str, country: &str) -> (StatusCode, Value) {
    svc.post("/shipments", Some(key), shipment_body(order, country))
        .await
}

async fn cancel(svc: &Served, key: &str, order: &str) -> (StatusCode, Value) {
    svc.compensate("/shipments/cancel", key, order).await
}

/// Rows in `shipments` and `saga_barrier`: `svc.counts(ROWS)`.
const ROWS: [&str; 2] = ["shipments", "saga_barrier"];

fn shipment_body(order: &str, country: &str) -> Value {
    json!({
        "order_id": order,
        "address": { "name": "Ada", "line1": "1 Loop Rd", "city": "Paris", "postal_code": "75001", "country": country },
        "items": [{ "sku": "apple", "quantity": 2 }],
        "reservation_id": "0193a4c0-0000-7000-8000-000000000001",
    })
}

async fn shipment_is_created_listed_and_cancelled_once(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = ship(&svc, "s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "created");
    let id = b["shipment_id"].as_str().unwrap().to_string();
    let (s, again) = ship(&svc, "s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!((s, &again), (StatusCode::CREATED, &b));

    let list = svc.list("/shipments", "o-1").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["shipment_id"], id);
    assert_eq!(list[0]["status"], "created");
    assert_eq!(list[0]["address"]["city"], "Paris");
    assert_eq!(list[0]["saga_id"], "s1");

    let (s, c) = cancel(&svc, "s1:create_shipment:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["cancelled"], true);
    assert_eq!(c["shipment_id"], id);
    let (s, again) = cancel(&svc, "s1:create_shipment:compensation", "o-1").await;
    assert_eq!((s, &again), (StatusCode::OK, &c));
    let list = svc.list("/shipments", "o-1").await;
    assert_eq!(list[0]["status"], "cancelled");
    assert!(list[0]["cancelled_at"].is_string());
}

async fn undeliverable_country_is_409_and_creates_nothing(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = ship(&svc, "s1:create_shipment:action", "o-1", "ZZ").await;
    assert_problem(s, &b, StatusCode::CONFLICT, "undeliverable");
    assert!(svc.list("/shipments", "o-1").await.is_empty());
    let (s, b) = cancel(&svc, "s1:create_shipment:compensation", "o-1").await;
    assert_eq!((s, &b["cancelled"]), (StatusCode::OK, &json!(false)), "{b}");
    assert_eq!(svc.counts(ROWS).await, [0, 2]);
}

async fn null_compensation_then_hanging_shipment_is_refused(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = cancel(&svc, "s1:create_shipment:compensation", "o-1").await;
    assert_eq!((s, &b["cancelled"]), (StatusCode::OK, &json!(false)), "{b}");
    let (s, b) = ship(&svc, "s1:create_shipment:action", "o-1", "FR").await;
    assert_problem(s, &b, StatusCode::CONFLICT, "hanging");
    assert!(svc.list("/shipments", "o-1").await.is_empty());
}

async fn concurrent_action_and_compensation_end_consistent(store: Store) {
    // Whichever wins, the end state is "no live shipment": either created then cancelled, or
    // null compensation then hanging refusal.
    for i in 0..5 {
        let svc = spawn(store).await;
        let action = format!("s{i}:create_shipment:action");
        let comp = format!("s{i}:create_shipment:compensation");
        let (a, c) = tokio::join!(ship(&svc, &action, "o-1", "FR"), cancel(&svc, &comp, "o-1"));
        let live: Vec<Value> = svc
            .list("/shipments", "o-1")
            .await
            .into_iter()
            .filter(|s| s["status"] == "created")
            .collect();
        assert!(live.is_empty(), "{a:?} {c:?} {live:?}");
        assert_eq!(c.0, StatusCode::OK);
        assert!(
            a.0 == StatusCode::CREATED || a.1["type"] == "urn:tandem:problem:hanging",
            "{a:?}"
        );
    }
}

async fn effect_then_503_and_in_progress_faults(store: Store) {
    let svc = spawn(store).await;
    svc.fault(json!({ "key": "s1:create_shipment:action", "kind": "effect_then_503" }))
        .await;
    svc.fault(json!({ "order_id": "o-2", "kind": "in_progress", "times": 2 }))
        .await;

    let (s, _) = ship(&svc, "s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, b) = ship(&svc, "s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(svc.list("/shipments", "o-1").await.len(), 1);

    let results =
        join_all((0..2).map(|_| ship(&svc, "s2:create_shipment:action", "o-2", "FR"))).await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::TOO_EARLY),
        "{results:?}"
    );
    assert!(svc.list("/shipments", "o-2").await.is_empty());
    let (s, _) = ship(&svc, "s2:create_shipment:action", "o-2", "FR").await;
    assert_eq!(s, StatusCode::CREATED);
}

async fn bad_input_is_rejected_and_stores_nothing(store: Store) {
    let svc = spawn(store).await;
    let good = shipment_body("o-1", "FR");
    svc.assert_keys_checked("/shipments", &good, "/shipments/cancel")
        .await;
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut b = shipment_body("o-1", "FR");
        f(&mut b);
        b
    };
    let cases = [
        (
            mutate(&|b| b["address"]["country"] = json!("fr")),
            "/address/country",
        ),
        (
            mutate(&|b| b["address"]["country"] = json!("FRA")),
            "/address/country",
        ),
        (
            mutate(&|b| b["address"]["city"] = json!("")),
            "/address/city",
        ),
        (
            mutate(&|b| _ = b["address"].as_object_mut().unwrap().remove("postal_code")),
            "/address/postal_code",
        ),
        (mutate(&|b| b["items"] = json!([])), "/items"),
        (
            mutate(&|b| b["items"][0]["quantity"] = json!(0)),
            "/items/0/quantity",
        ),
        (mutate(&|b| b["address"] = json!("Paris")), "/address"),
        (mutate(&|b| b["order_id"] = json!("")), "/order_id"),
    ];
    svc.assert_invalid("/shipments", "s1:create_shipment:action", &cases)
        .await;
    let comp = [(json!({}), "/order_id")];
    svc.assert_invalid(
        "/shipments/cancel",
        "s1:create_shipment:compensation",
        &comp,
    )
    .await;
    assert_eq!(svc.counts(ROWS).await, [0, 0]);
}

/// Defect: `GET /shipments?order_id=%00` answered 500 (Postgres refuses a NUL in text); now a
/// 422 naming the parameter, as is a NUL in a nested body field. Nothing is stored.
async fn a_nul_in_the_query_or_the_body_is_422_naming_it(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = svc.get("/shipments?order_id=%00").await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    assert_eq!(b["errors"][0]["pointer"], "/query/order_id", "{b}");
    let mut body = shipment_body("o-1", "FR");
    body["address"]["name"] = json!("A\u{0}da");
    svc.assert_invalid(
        "/shipments",
        "s1:create_shipment:action",
        &[(body, "/address/name")],
    )
    .await;
    assert_eq!(svc.counts(ROWS).await, [0, 0]);
}

/// 2PC: the same effect in a prepared transaction — invisible until committed, then listed with
/// its transaction id; a business refusal votes NO with its reason and prepares nothing.
#[tokio::test]
async fn two_pc_prepare_commit_and_a_no_vote() {
    let (good, refused) = (shipment_body("o-1", "FR"), shipment_body("o-2", "ZZ"));
    spawn(Store::Postgres)
        .await
        .assert_two_pc_commit_and_refusal(
            "/shipments",
            "/shipments",
            good,
            refused,
            "undeliverable",
        )
        .await;
}

/// The OpenAPI document and the router agree, fault injection on and off.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    tandem_kit::service_tests::assert_documented(&shipping::SPEC).await;
}

// The conformance suite: each test above that takes a `Store`, on Postgres and on SQLite.
tandem_kit::on_both_stores!(
    shipment_is_created_listed_and_cancelled_once,
    undeliverable_country_is_409_and_creates_nothing,
    null_compensation_then_hanging_shipment_is_refused,
    concurrent_action_and_compensation_end_consistent,
    effect_then_503_and_in_progress_faults,
    bad_input_is_rejected_and_stores_nothing,
    a_nul_in_the_query_or_the_body_is_422_naming_it,
);
