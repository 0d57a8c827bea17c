//! Shipping against a real Postgres (a fresh database per test), served in-process on port 0:
//! shipments, the undeliverable destination, cancellation, the barrier and fault injection.

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
    Svc(Served::start(&shipping::SPEC, |c| {
        c.fault_injection = tandem_kit::faults::Switch::On
    })
    .await)
}

impl Svc {
    async fn shipments(&self, order: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(format!("{}/shipments?order_id={order}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Vec<Value>>().await.unwrap()
    }

    async fn ship(&self, key: &str, order: &str, country: &str) -> (StatusCode, Value) {
        self.post("/shipments", Some(key), shipment_body(order, country))
            .await
    }

    async fn cancel(&self, key: &str, order: &str) -> (StatusCode, Value) {
        self.post("/shipments/cancel", Some(key), json!({ "order_id": order }))
            .await
    }

    async fn rows(&self) -> (i64, i64) {
        (
            self.count("shipments").await,
            self.count("saga_barrier").await,
        )
    }
}

fn shipment_body(order: &str, country: &str) -> Value {
    json!({
        "order_id": order,
        "address": { "name": "Ada", "line1": "1 Loop Rd", "city": "Paris", "postal_code": "75001", "country": country },
        "items": [{ "sku": "apple", "quantity": 2 }],
        "reservation_id": "0193a4c0-0000-7000-8000-000000000001",
    })
}

#[tokio::test]
async fn shipment_is_created_listed_and_cancelled_once() {
    let svc = spawn().await;
    let (s, b) = svc.ship("s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"], "created");
    let id = b["shipment_id"].as_str().unwrap().to_string();
    let (s, again) = svc.ship("s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!((s, &again), (StatusCode::CREATED, &b));

    let list = svc.shipments("o-1").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["shipment_id"], id);
    assert_eq!(list[0]["status"], "created");
    assert_eq!(list[0]["address"]["city"], "Paris");
    assert_eq!(list[0]["saga_id"], "s1");

    let (s, c) = svc.cancel("s1:create_shipment:compensation", "o-1").await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["cancelled"], true);
    assert_eq!(c["shipment_id"], id);
    let (s, again) = svc.cancel("s1:create_shipment:compensation", "o-1").await;
    assert_eq!((s, &again), (StatusCode::OK, &c));
    let list = svc.shipments("o-1").await;
    assert_eq!(list[0]["status"], "cancelled");
    assert!(list[0]["cancelled_at"].is_string());
}

#[tokio::test]
async fn undeliverable_country_is_409_and_creates_nothing() {
    let svc = spawn().await;
    let (s, b) = svc.ship("s1:create_shipment:action", "o-1", "ZZ").await;
    assert_problem(s, &b, StatusCode::CONFLICT, "undeliverable");
    assert!(svc.shipments("o-1").await.is_empty());
    let (s, b) = svc.cancel("s1:create_shipment:compensation", "o-1").await;
    assert_eq!((s, &b["cancelled"]), (StatusCode::OK, &json!(false)), "{b}");
    assert_eq!(svc.rows().await, (0, 2));
}

#[tokio::test]
async fn null_compensation_then_hanging_shipment_is_refused() {
    let svc = spawn().await;
    let (s, b) = svc.cancel("s1:create_shipment:compensation", "o-1").await;
    assert_eq!((s, &b["cancelled"]), (StatusCode::OK, &json!(false)), "{b}");
    let (s, b) = svc.ship("s1:create_shipment:action", "o-1", "FR").await;
    assert_problem(s, &b, StatusCode::CONFLICT, "hanging");
    assert!(svc.shipments("o-1").await.is_empty());
}

#[tokio::test]
async fn concurrent_action_and_compensation_end_consistent() {
    // Whichever wins, the end state is "no live shipment": either created then cancelled, or
    // null compensation then hanging refusal.
    for i in 0..5 {
        let svc = spawn().await;
        let action = format!("s{i}:create_shipment:action");
        let comp = format!("s{i}:create_shipment:compensation");
        let (a, c) = tokio::join!(svc.ship(&action, "o-1", "FR"), svc.cancel(&comp, "o-1"));
        let live: Vec<Value> = svc
            .shipments("o-1")
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

#[tokio::test]
async fn effect_then_503_and_in_progress_faults() {
    let svc = spawn().await;
    let (s, b) = svc
        .post(
            "/faults",
            None,
            json!({ "key": "s1:create_shipment:action", "kind": "effect_then_503" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = svc
        .post(
            "/faults",
            None,
            json!({ "order_id": "o-2", "kind": "in_progress", "times": 2 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    let (s, _) = svc.ship("s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, b) = svc.ship("s1:create_shipment:action", "o-1", "FR").await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(svc.shipments("o-1").await.len(), 1);

    let results =
        join_all((0..2).map(|_| svc.ship("s2:create_shipment:action", "o-2", "FR"))).await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::TOO_EARLY),
        "{results:?}"
    );
    assert!(svc.shipments("o-2").await.is_empty());
    let (s, _) = svc.ship("s2:create_shipment:action", "o-2", "FR").await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_input_is_rejected_and_stores_nothing() {
    let svc = spawn().await;
    let (s, b) = svc
        .post("/shipments", None, shipment_body("o-1", "FR"))
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad-request");
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
    for (body, pointer) in cases {
        let (s, b) = svc
            .post(
                "/shipments",
                Some("s1:create_shipment:action"),
                body.clone(),
            )
            .await;
        assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
        assert_eq!(b["errors"][0]["pointer"], pointer, "{body} → {b}");
    }
    let (s, b) = svc
        .post(
            "/shipments/cancel",
            Some("s1:create_shipment:compensation"),
            json!({}),
        )
        .await;
    assert_problem(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input");
    assert_eq!(svc.rows().await, (0, 0));
}
