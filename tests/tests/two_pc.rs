//! 2PC over the real services: the orchestrator's coordinator drives inventory, payment and
//! shipping through Postgres prepared transactions (`POST /transactions`), in-process on fresh
//! databases. Each case checks the effects in all three services' own audit endpoints and that
//! no prepared transaction is left behind.

use reqwest::Method;
use serde_json::{Value, json};
use tandem_cli::client::{Client, Reply, checkout_input};
use tandem_tests::TestStack;

async fn available(c: &Client, sku: &str) -> i64 {
    c.stock(sku).await.unwrap()["available"].as_i64().unwrap()
}

/// `POST {orchestrator}{path}` with `body`.
async fn post(c: &Client, path: &str, body: Value) -> Reply {
    let url = format!("{}{path}", c.orchestrator);
    c.send_json(Method::POST, &url, &body).await.unwrap()
}

/// A checkout of `qty` widgets for `order` as one 2PC transaction (waiting up to 20 s for it
/// to settle).
async fn checkout_2pc(c: &Client, order: &str, qty: i64, card: &str, country: &str) -> Reply {
    let input = checkout_input(order, "widget", qty, card, country);
    let body = json!({ "protocol": "2pc", "definition": "checkout", "input": input });
    post(c, "/transactions?wait=20", body).await
}

/// What each service's audit endpoint lists for `order`: (reservations, payments, shipments).
async fn effects(c: &Client, order: &str) -> [Vec<Value>; 3] {
    [
        c.reservations(order).await.unwrap(),
        c.payments(order).await.unwrap(),
        c.shipments(order).await.unwrap(),
    ]
}

/// No service holds a prepared transaction any more.
async fn nothing_prepared(c: &Client) {
    for url in [&c.inventory, &c.payment, &c.shipping] {
        let r = c.get(&format!("{url}/2pc/status")).await.unwrap();
        let status = r.body;
        assert_eq!(r.status, 200, "{url}: {status}");
        assert_eq!(status["can_prepare"], true, "{status}");
        assert_eq!(status["prepared"], json!([]), "{url}: {status}");
    }
}

/// A fresh stack with 10 `widget`s in stock.
async fn start(name: &str) -> (TestStack, Client) {
    let (stack, c) = tandem_tests::in_process(name, |_| {}).await;
    assert_eq!(c.set_stock("widget", 10).await.unwrap().status, 200);
    (stack, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2pc_checkout_commits_in_all_three_services() {
    let (stack, c) = start("tpc_commit").await;

    let Reply { status, body: t } = checkout_2pc(&c, "t-1", 2, "tok_visa", "FR").await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["state"], "committed", "{t}");
    assert_eq!(available(&c, "widget").await, 8);
    let [reservations, payments, shipments] = effects(&c, "t-1").await;
    assert_eq!(reservations.len(), 1, "{reservations:?}");
    assert_eq!(payments.len(), 1, "one charge: {payments:?}");
    assert_eq!(payments[0]["kind"], "charge");
    assert_eq!(shipments.len(), 1, "{shipments:?}");
    // The coordinator-allocated reservation id reaches both inventory and shipping.
    assert_eq!(
        reservations[0]["reservation_id"].as_str(),
        shipments[0]["reservation_id"].as_str()
    );
    // Every committed effect carries the transaction id.
    for row in [&reservations[0], &payments[0], &shipments[0]] {
        assert_eq!(row["txn_id"], t["id"], "{row}");
    }
    nothing_prepared(&c).await;
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_vote_aborts_everything_and_sagas_share_the_business_key() {
    let (stack, c) = start("tpc_abort").await;

    // Payment votes NO (declined card): stock unchanged, no charge, no shipment.
    let t = checkout_2pc(&c, "t-2", 2, "tok_decline", "FR").await.body;
    assert_eq!(t["state"], "aborted", "{t}");
    assert_eq!(available(&c, "widget").await, 10);
    let [reservations, payments, shipments] = effects(&c, "t-2").await;
    assert!(reservations.is_empty() && payments.is_empty() && shipments.is_empty());

    // Shipping votes NO (undeliverable): the same.
    let t = checkout_2pc(&c, "t-3", 1, "tok_visa", "ZZ").await.body;
    assert_eq!(t["state"], "aborted", "{t}");
    assert_eq!(available(&c, "widget").await, 10);

    // A saga cannot take an order id a transaction holds.
    let taken = checkout_input("t-2", "widget", 1, "tok_visa", "FR");
    let r = c.start_saga("checkout", &taken, None).await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);

    // The saga checkout still works with the coordinator-allocated reservation id.
    let input = checkout_input("s-1", "widget", 1, "tok_visa", "FR");
    let saga = post(
        &c,
        "/sagas?wait=20",
        json!({ "definition": "checkout", "input": input }),
    )
    .await
    .body;
    assert_eq!(saga["status"], "completed", "{saga}");
    assert_eq!(available(&c, "widget").await, 9);
    nothing_prepared(&c).await;
    stack.stop().await.unwrap();
}
