//! Payment against a real Postgres (a fresh database per test), served in-process on port 0:
//! charges, declines, refunds exactly once, the barrier and fault injection.

use std::ops::Deref;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_kit::testing::{Served, assert_problem};

struct Svc(Served);

impl Deref for Svc {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

async fn spawn() -> Svc {
    Svc(Served::start(&payment::SPEC, |c| {
        c.fault_injection = tandem_kit::faults::Switch::On
    })
    .await)
}

impl Svc {
    async fn payments(&self, order: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(format!("{}/payments?order_id={order}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Vec<Value>>().await.unwrap()
    }

    async fn charge(&self, key: &str, order: &str, card: &str) -> (StatusCode, Value) {
        self.post("/charges", Some(key), charge_body(order, card))
            .await
    }

    async fn refund(&self, key: &str, order: &str) -> (StatusCode, Value) {
        self.post("/refunds", Some(key), json!({ "order_id": order }))
            .await
    }

    async fn rows(&self) -> (i64, i64) {
        (
            self.count("payments").await,
            self.count("saga_barrier").await,
        )
    }
}

fn charge_body(order: &str, card: &str) -> Value {
    json!({
        "order_id": order, "customer_id": "c-1", "amount_cents": 4200,
        "currency": "EUR", "card_token": card,
    })
}

#[tokio::test]
async fn charge_then_refund_exactly_once() {
    let svc = spawn().await;
    let (s, charge) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_visa")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{charge}");
    assert_eq!(charge["amount_cents"], 4200);
    assert_eq!(charge["status"], "succeeded");
    let charge_id = charge["charge_id"].as_str().unwrap().to_string();

    let (s, again) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_visa")
        .await;
    assert_eq!(
        (s, &again),
        (StatusCode::CREATED, &charge),
        "duplicate: same body"
    );
    assert_eq!(svc.payments("o-1").await.len(), 1);

    let (s, refund) = svc.refund("s1:charge_payment:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{refund}");
    assert_eq!(refund["refunded"], true);
    assert_eq!(refund["charge_id"], charge_id);
    assert_eq!(refund["amount_cents"], 4200);
    let (s, again) = svc.refund("s1:charge_payment:compensation", "o-1").await;
    assert_eq!(
        (s, &again),
        (StatusCode::OK, &refund),
        "duplicate: same body"
    );

    let list = svc.payments("o-1").await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["kind"], "charge");
    assert_eq!(list[0]["id"], charge_id);
    assert_eq!(list[0]["saga_id"], "s1");
    assert_eq!(list[0]["currency"], "EUR");
    assert!(list[0]["created_at"].is_string());
    assert_eq!(list[1]["kind"], "refund");
    assert_eq!(list[1]["charge_id"], charge_id);
    assert_eq!(list[1]["amount_cents"], 4200);
    assert!(svc.payments("o-2").await.is_empty());
}

#[tokio::test]
async fn declined_card_is_409_and_charges_nothing() {
    let svc = spawn().await;
    let (s, b) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_decline")
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "card-declined");
    assert!(svc.payments("o-1").await.is_empty());
    let (s2, b2) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_decline")
        .await;
    assert_eq!((s2, b2), (s, b));

    // Compensation of the declined charge: success, nothing refunded.
    let (s, b) = svc.refund("s1:charge_payment:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["refunded"], false);
    assert!(svc.payments("o-1").await.is_empty());
}

#[tokio::test]
async fn null_compensation_then_hanging_charge_is_refused() {
    let svc = spawn().await;
    let (s, b) = svc.refund("s1:charge_payment:compensation", "o-1").await;
    assert_eq!((s, &b["refunded"]), (StatusCode::OK, &json!(false)), "{b}");
    let (s, b) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_visa")
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "hanging");
    assert!(svc.payments("o-1").await.is_empty());
}

#[tokio::test]
async fn concurrent_duplicate_charges_charge_once() {
    let svc = spawn().await;
    let results =
        join_all((0..10).map(|_| svc.charge("s1:charge_payment:action", "o-1", "tok_visa"))).await;
    for (s, b) in &results {
        assert_eq!((*s, b), (StatusCode::CREATED, &results[0].1));
    }
    assert_eq!(svc.payments("o-1").await.len(), 1);
    // Concurrent duplicate refunds: one refund.
    let results =
        join_all((0..10).map(|_| svc.refund("s1:charge_payment:compensation", "o-1"))).await;
    for (s, b) in &results {
        assert_eq!((*s, b), (StatusCode::OK, &results[0].1));
    }
    assert_eq!(results[0].1["refunded"], true);
    assert_eq!(svc.payments("o-1").await.len(), 2);
}

#[tokio::test]
async fn effect_then_503_retried_charges_once() {
    let svc = spawn().await;
    svc.fault(json!({ "order_id": "o-1", "kind": "effect_then_503" }))
        .await;
    let (s, b) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_visa")
        .await;
    assert_problem(s, &b, StatusCode::SERVICE_UNAVAILABLE, "injected-fault");
    assert_eq!(
        svc.payments("o-1").await.len(),
        1,
        "the charge was committed"
    );
    let (s, b) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_visa")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(svc.payments("o-1").await.len(), 1, "one charge");
    assert_eq!(svc.payments("o-1").await[0]["id"], b["charge_id"]);
}

#[tokio::test]
async fn transient_refund_failures_then_one_refund() {
    let svc = spawn().await;
    svc.fault(json!({ "order_id": "o-1", "op": "compensation", "kind": "transient", "times": 3 }))
        .await;
    let (s, _) = svc
        .charge("s1:charge_payment:action", "o-1", "tok_visa")
        .await;
    assert_eq!(s, StatusCode::CREATED, "action not in the fault's scope");
    for _ in 0..3 {
        let (s, b) = svc.refund("s1:charge_payment:compensation", "o-1").await;
        assert_problem(s, &b, StatusCode::INTERNAL_SERVER_ERROR, "injected-fault");
    }
    assert_eq!(
        svc.rows().await,
        (1, 1),
        "one charge, only the action's barrier row"
    );
    let (s, b) = svc.refund("s1:charge_payment:compensation", "o-1").await;
    assert_eq!((s, &b["refunded"]), (StatusCode::OK, &json!(true)));
    assert_eq!(svc.payments("o-1").await.len(), 2);
}

#[tokio::test]
async fn bad_input_is_rejected_and_stores_nothing() {
    let svc = spawn().await;
    let (s, b) = svc
        .post("/charges", None, charge_body("o-1", "tok_visa"))
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");
    let (s, b) = svc
        .post(
            "/refunds",
            Some("s1:charge_payment:action"),
            json!({"order_id": "o-1"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");
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
    for (body, pointer) in cases {
        let (s, b) = svc
            .post("/charges", Some("s1:charge_payment:action"), body.clone())
            .await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        if !pointer.is_empty() {
            assert_eq!(b["errors"][0]["pointer"], pointer, "{body} → {b}");
        }
    }
    let (s, b) = svc
        .post(
            "/refunds",
            Some("s1:charge_payment:compensation"),
            json!({"order_id": 7}),
        )
        .await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    let resp = svc
        .http
        .get(format!("{}/payments", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let resp = svc
        .http
        .delete(format!("{}/charges", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(svc.rows().await, (0, 0));
}
