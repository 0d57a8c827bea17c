//! Payment against a real Postgres (a fresh database per test), served in-process on port 0:
//! charges, declines, refunds exactly once, the barrier and fault injection.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::testing::{Served, Store, assert_problem};

async fn spawn(store: Store) -> Served {
    Served::with_faults_on(store, &payment::SPEC).await
}

async fn charge(svc: &Served, key: &str, order: &str, card: &str) -> (StatusCode, Value) {
    svc.post("/charges", Some(key), charge_body(order, card))
        .await
}

async fn refund(svc: &Served, key: &str, order: &str) -> (StatusCode, Value) {
    svc.compensate("/refunds", key, order).await
}

/// Rows in `payments` and `saga_barrier`: `svc.counts(ROWS)`.
const ROWS: [&str; 2] = ["payments", "saga_barrier"];

fn charge_body(order: &str, card: &str) -> Value {
    json!({
        "order_id": order, "customer_id": "c-1", "amount_cents": 4200,
        "currency": "EUR", "card_token": card,
    })
}

async fn charge_then_refund_exactly_once(store: Store) {
    let svc = spawn(store).await;
    let (s, charged) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa").await;
    assert_eq!(s, StatusCode::CREATED, "{charged}");
    assert_eq!(charged["amount_cents"], 4200);
    assert_eq!(charged["status"], "succeeded");
    let charge_id = charged["charge_id"].as_str().unwrap().to_string();

    let (s, again) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa").await;
    assert_eq!(
        (s, &again),
        (StatusCode::CREATED, &charged),
        "duplicate: same body"
    );
    assert_eq!(svc.list("/payments", "o-1").await.len(), 1);

    let (s, refunded) = refund(&svc, "s1:charge_payment:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{refunded}");
    assert_eq!(refunded["refunded"], true);
    assert_eq!(refunded["charge_id"], charge_id);
    assert_eq!(refunded["amount_cents"], 4200);
    let (s, again) = refund(&svc, "s1:charge_payment:compensation", "o-1").await;
    assert_eq!(
        (s, &again),
        (StatusCode::OK, &refunded),
        "duplicate: same body"
    );

    let list = svc.list("/payments", "o-1").await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["kind"], "charge");
    assert_eq!(list[0]["id"], charge_id);
    assert_eq!(list[0]["saga_id"], "s1");
    assert_eq!(list[0]["currency"], "EUR");
    assert!(list[0]["created_at"].is_string());
    assert_eq!(list[1]["kind"], "refund");
    assert_eq!(list[1]["charge_id"], charge_id);
    assert_eq!(list[1]["amount_cents"], 4200);
    assert!(svc.list("/payments", "o-2").await.is_empty());
}

async fn declined_card_is_409_and_charges_nothing(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_decline").await;
    assert_problem(s, &b, StatusCode::CONFLICT, "card-declined");
    assert!(svc.list("/payments", "o-1").await.is_empty());
    let (s2, b2) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_decline").await;
    assert_eq!((s2, b2), (s, b));

    // Compensation of the declined charge: success, nothing refunded.
    let (s, b) = refund(&svc, "s1:charge_payment:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["refunded"], false);
    assert!(svc.list("/payments", "o-1").await.is_empty());
}

async fn null_compensation_then_hanging_charge_is_refused(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = refund(&svc, "s1:charge_payment:compensation", "o-1").await;
    assert_eq!((s, &b["refunded"]), (StatusCode::OK, &json!(false)), "{b}");
    let (s, b) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa").await;
    assert_problem(s, &b, StatusCode::CONFLICT, "hanging");
    assert!(svc.list("/payments", "o-1").await.is_empty());
}

async fn concurrent_duplicate_charges_charge_once(store: Store) {
    let svc = spawn(store).await;
    let results =
        join_all((0..10).map(|_| charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa")))
            .await;
    for (s, b) in &results {
        assert_eq!((*s, b), (StatusCode::CREATED, &results[0].1));
    }
    assert_eq!(svc.list("/payments", "o-1").await.len(), 1);
    // Concurrent duplicate refunds: one refund.
    let results =
        join_all((0..10).map(|_| refund(&svc, "s1:charge_payment:compensation", "o-1"))).await;
    for (s, b) in &results {
        assert_eq!((*s, b), (StatusCode::OK, &results[0].1));
    }
    assert_eq!(results[0].1["refunded"], true);
    assert_eq!(svc.list("/payments", "o-1").await.len(), 2);
}

async fn effect_then_503_retried_charges_once(store: Store) {
    let svc = spawn(store).await;
    svc.fault(json!({ "order_id": "o-1", "kind": "effect_then_503" }))
        .await;
    let (s, b) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa").await;
    assert_problem(s, &b, StatusCode::SERVICE_UNAVAILABLE, "injected-fault");
    assert_eq!(
        svc.list("/payments", "o-1").await.len(),
        1,
        "the charge was committed"
    );
    let (s, b) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(svc.list("/payments", "o-1").await.len(), 1, "one charge");
    assert_eq!(svc.list("/payments", "o-1").await[0]["id"], b["charge_id"]);
}

async fn transient_refund_failures_then_one_refund(store: Store) {
    let svc = spawn(store).await;
    svc.fault(json!({ "order_id": "o-1", "op": "compensation", "kind": "transient", "times": 3 }))
        .await;
    let (s, _) = charge(&svc, "s1:charge_payment:action", "o-1", "tok_visa").await;
    assert_eq!(s, StatusCode::CREATED, "action not in the fault's scope");
    for _ in 0..3 {
        let (s, b) = refund(&svc, "s1:charge_payment:compensation", "o-1").await;
        assert_problem(s, &b, StatusCode::INTERNAL_SERVER_ERROR, "injected-fault");
    }
    assert_eq!(
        svc.counts(ROWS).await,
        [1, 1],
        "one charge, only the action's barrier row"
    );
    let (s, b) = refund(&svc, "s1:charge_payment:compensation", "o-1").await;
    assert_eq!((s, &b["refunded"]), (StatusCode::OK, &json!(true)));
    assert_eq!(svc.list("/payments", "o-1").await.len(), 2);
}

async fn bad_input_is_rejected_and_stores_nothing(store: Store) {
    let svc = spawn(store).await;
    let good = charge_body("o-1", "tok_visa");
    svc.assert_keys_checked("/charges", &good, "/refunds").await;
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut b = charge_body("o-1", "tok_visa");
        f(&mut b);
        b
    };
    let cases = [
        (mutate(&|b| b["amount_cents"] = json!(0)), "/amount_cents"),
        (mutate(&|b| b["amount_cents"] = json!(-5)), "/amount_cents"),
        (
            mutate(&|b| b["amount_cents"] = json!("10")),
            "/amount_cents",
        ),
        (mutate(&|b| b["currency"] = json!("eur")), "/currency"),
        (mutate(&|b| b["currency"] = json!("EURO")), "/currency"),
        (mutate(&|b| b["card_token"] = json!("")), "/card_token"),
        (mutate(&|b| b["customer_id"] = json!("")), "/customer_id"),
        (
            mutate(&|b| _ = b.as_object_mut().unwrap().remove("order_id")),
            "/order_id",
        ),
        (mutate(&|b| b["extra"] = json!(1)), ""),
    ];
    svc.assert_invalid("/charges", "s1:charge_payment:action", &cases)
        .await;
    let comp = [(json!({"order_id": 7}), "/order_id")];
    svc.assert_invalid("/refunds", "s1:charge_payment:compensation", &comp)
        .await;
    let (s, b) = svc.get("/payments").await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    let (s, b) = svc.delete("/charges").await;
    assert_problem(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    assert_eq!(svc.counts(ROWS).await, [0, 0]);
}

/// Defect: `GET /payments?order_id=%00` answered 500 (Postgres refuses a NUL in text); now a
/// 422 naming the parameter, as is a NUL in a body field. Nothing is stored.
async fn a_nul_in_the_query_or_the_body_is_422_naming_it(store: Store) {
    let svc = spawn(store).await;
    let (s, b) = svc.get("/payments?order_id=%00").await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    assert_eq!(b["errors"][0]["pointer"], "/query/order_id", "{b}");
    let mut body = charge_body("o-1", "tok_visa");
    body["customer_id"] = json!("c\u{0}");
    svc.assert_invalid(
        "/charges",
        "s1:charge_payment:action",
        &[(body, "/customer_id")],
    )
    .await;
    assert_eq!(svc.counts(ROWS).await, [0, 0]);
}

/// 2PC: the same effect in a prepared transaction — invisible until committed, then listed with
/// its transaction id; a business refusal votes NO with its reason and prepares nothing.
#[tokio::test]
async fn two_pc_prepare_commit_and_a_no_vote() {
    let (good, refused) = (
        charge_body("o-1", "tok_visa"),
        charge_body("o-2", "tok_decline"),
    );
    spawn(Store::Postgres)
        .await
        .assert_two_pc_commit_and_refusal("/charges", "/payments", good, refused, "card-declined")
        .await;
}

/// The OpenAPI document and the router agree, fault injection on and off.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    tandem_kit::service_tests::assert_documented(&payment::SPEC).await;
}

// The conformance suite: each test above that takes a `Store`, on Postgres and on SQLite.
tandem_kit::on_both_stores!(
    charge_then_refund_exactly_once,
    declined_card_is_409_and_charges_nothing,
    null_compensation_then_hanging_charge_is_refused,
    concurrent_duplicate_charges_charge_once,
    effect_then_503_retried_charges_once,
    transient_refund_failures_then_one_refund,
    bad_input_is_rejected_and_stores_nothing,
    a_nul_in_the_query_or_the_body_is_422_naming_it,
);
