//! Operators' actions against real Postgres and the real services: cancel (through an instance
//! that does not own the saga, while the owner has a call in flight), retry-now, resume, and
//! what is refused.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::demo;
use tandem_tests::{OtherOrchestrator, in_process, saga_reaches, slow_checkout};

/// The index of the first event `kind` of `step` (panics naming the timeline if absent).
fn at(s: &Value, kind: &str, step: &str) -> usize {
    demo::event_index(s, kind, Some(step))
        .unwrap_or_else(|| panic!("no {kind} of {step}:\n{}", demo::timeline(s)))
}

fn event<'a>(s: &'a Value, kind: &str) -> &'a Value {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}:\n{}", demo::timeline(s)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_a_non_owner_while_a_call_is_in_flight_compensates_in_reverse() {
    let (stack, a) = in_process("cancel", |_| {}).await;
    let b = OtherOrchestrator::start(&stack, "operator-b").await;
    a.set_stock("sku-cancel", 5).await.unwrap();
    let input = checkout_input("cancel-1", "sku-cancel", 2, "tok_visa", "GB");
    // The charge takes 3 s: it is in flight on instance A (which created the saga) when B
    // receives the cancel.
    let latency_ms = 3000;
    let id = slow_checkout(&a, ("payment", "action", latency_ms), &input).await;
    let sent = tokio::time::Instant::now();
    let before = saga_reaches(&a, &id, "step_started", "charge_payment").await;
    let owner = before["lease"]["owner"].as_str().unwrap().to_string();
    assert_ne!(owner, "operator-b");
    assert_eq!(before["status"], "running");

    let r = b.client.saga_action(&id, "cancel", "alice").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "compensating");
    assert_eq!(r.body["lease"]["owner"], "operator-b", "B took the lease");
    assert!(r.body["lease"]["epoch"].as_i64() > before["lease"]["epoch"].as_i64());
    let cancelled = event(&r.body, "saga_cancelled");
    assert_eq!(cancelled["detail"]["by"], "alice");
    assert_eq!(cancelled["detail"]["in_flight"], "charge_payment");
    assert!(cancelled["at"].is_string(), "{cancelled}");

    // Idempotent: a second cancel (through A this time) changes nothing.
    let again = a.saga_action(&id, "cancel", "bob").await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);

    let s = a.settle(&id, 60).await.unwrap();
    assert_eq!(s["status"], "compensated", "{}", demo::timeline(&s));
    // The charge in flight counts as sent: compensated first, then the reservation.
    let refund = at(&s, "compensation_succeeded", "charge_payment");
    let release = at(&s, "compensation_succeeded", "reserve_inventory");
    assert!(refund < release, "{}", demo::timeline(&s));
    assert!(at(&s, "saga_cancelled", "charge_payment") < refund);
    assert!(demo::event_index(&s, "step_started", Some("create_shipment")).is_none());
    let cancels = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "saga_cancelled");
    assert_eq!(cancels.count(), 1);

    // Let A's slow call come back: its outcome is fenced (B's epoch) and changes nothing.
    tokio::time::sleep_until(sent + Duration::from_millis(latency_ms + 1000)).await;
    let after = a.wait_saga(&id, 0).await.unwrap();
    assert_eq!(after["events"], s["events"], "{}", demo::timeline(&after));
    assert_eq!(after["status"], "compensated");
    // Nothing is left taken: no net charge, the stock is back.
    let pays = a.payments("cancel-1").await.unwrap();
    let charged = pays.iter().filter(|p| p["kind"] == "charge").count();
    let refunded = pays.iter().filter(|p| p["kind"] == "refund").count();
    assert!(charged == refunded, "{pays:?}");
    assert_eq!(a.stock("sku-cancel").await.unwrap()["available"], 5);

    // Settled: cancel and retry-now are refused.
    for action in ["cancel", "retry-now"] {
        let r = b.client.saga_action(&id, action, "alice").await.unwrap();
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.body["saga_status"], "compensated");
    }
    b.stop().await;
    stack.stop().await.unwrap();
}

/// A definition like the checkout whose retries wait a minute: only retry-now ends the wait.
async fn define_slow_retries(c: &Client) {
    let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = json!("checkout-slow-retries");
    def["policy"]["backoff"] = json!({"initial_ms": 60000, "max_ms": 60000, "jitter": 0.0});
    let r = tandem_tests::post_definition(c, &def).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_ends_a_backoff_and_resume_restarts_a_failed_saga() {
    let (stack, c) = in_process("retrynow", |_| {}).await;
    define_slow_retries(&c).await;
    c.set_stock("sku-rn", 5).await.unwrap();
    c.add_fault(
        "inventory",
        &json!({"order_id": "rn-1", "op": "action", "kind": "transient", "times": 1}),
    )
    .await
    .unwrap();
    let input = checkout_input("rn-1", "sku-rn", 1, "tok_visa", "GB");
    let id = tandem_tests::start(&c, "checkout-slow-retries", &input).await;
    let waiting = saga_reaches(&c, &id, "step_retry_scheduled", "reserve_inventory").await;
    assert!(waiting["next_attempt_at"].is_string());
    let r = c.saga_action(&id, "retry-now", "carol").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(event(&r.body, "step_retried_now")["detail"]["by"], "carol");
    let s = c.settle(&id, 30).await.unwrap();
    assert_eq!(s["status"], "completed", "{}", demo::timeline(&s));
    // Nothing waits any more.
    let r = c.saga_action(&id, "retry-now", "carol").await.unwrap();
    assert_eq!(
        (r.status, r.body["type"].as_str()),
        (409, Some("urn:tandem:problem:saga-settled")),
        "{}",
        r.body
    );
    // Resume is for failed sagas only.
    let r = c.saga_action(&id, "resume", "carol").await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["type"], "urn:tandem:problem:not-failed");
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_reject_bad_requests_and_store_nothing() {
    let (stack, c) = in_process("actionsbad", |_| {}).await;
    let unknown = uuid::Uuid::now_v7();
    let r = c
        .saga_action(&unknown.to_string(), "cancel", "dave")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let r = c.saga_action("not-a-uuid", "cancel", "dave").await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    c.set_stock("sku-bad", 5).await.unwrap();
    let input = checkout_input("bad-1", "sku-bad", 1, "tok_visa", "GB");
    let id = slow_checkout(&c, ("inventory", "action", 2000), &input).await;
    let long = "x".repeat(101);
    let r = c.saga_action(&id, "cancel", &long).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["errors"][0]["pointer"], "/header/Tandem-Actor");
    let r = c.saga_action(&id, "retry-now", "dave").await.unwrap();
    assert_eq!(r.status, 409, "a call in flight is not waiting: {}", r.body);
    assert_eq!(r.body["type"], "urn:tandem:problem:not-waiting");
    let s = c.settle(&id, 30).await.unwrap();
    assert_eq!(s["status"], "completed", "{}", demo::timeline(&s));
    assert!(
        !s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["by"].is_string()),
        "no refused action is logged: {}",
        demo::timeline(&s)
    );
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_owner_while_a_call_is_in_flight() {
    let (stack, c) = in_process("cancelown", |_| {}).await;
    c.set_stock("sku-own", 5).await.unwrap();
    let input = checkout_input("own-1", "sku-own", 1, "tok_visa", "GB");
    let id = slow_checkout(&c, ("shipping", "action", 2000), &input).await;
    let before = saga_reaches(&c, &id, "step_started", "create_shipment").await;
    // The owner itself takes its own lease again (new epoch): its task with the call in flight
    // is fenced; the new one compensates.
    let r = c.saga_action(&id, "cancel", "erin").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // The answer is the saga's view right after: its lease, when it shows one, is still the
    // owner's (no other instance exists). It may show none for a moment while the owner's new
    // task takes over (CI saw `null` once with three tests running at once).
    let owner = &r.body["lease"]["owner"];
    assert!(
        owner.is_null() || *owner == before["lease"]["owner"],
        "{}",
        r.body
    );
    let s = c.settle(&id, 60).await.unwrap();
    assert_eq!(s["status"], "compensated", "{}", demo::timeline(&s));
    let order: Vec<usize> = ["create_shipment", "charge_payment", "reserve_inventory"]
        .iter()
        .map(|step| at(&s, "compensation_succeeded", step))
        .collect();
    assert!(order.is_sorted(), "reverse order: {}", demo::timeline(&s));
    stack.stop().await.unwrap();
}
