//! 2PC over the real services: the orchestrator's coordinator drives inventory, payment and
//! shipping through Postgres prepared transactions (`POST /transactions`), in-process on fresh
//! databases. Each case checks the effects in all three services' own audit endpoints and that
//! no prepared transaction is left behind.

use serde_json::{Value, json};
use tandem_cli::client::checkout_input;
use tandem_tests::TestStack;

async fn get(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(&url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

async fn set_stock(http: &reqwest::Client, stack: &TestStack, sku: &str, available: i64) {
    let r = http
        .put(format!("{}/stock/{sku}", stack.inventory_url))
        .json(&json!({ "available": available }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn available(http: &reqwest::Client, stack: &TestStack, sku: &str) -> i64 {
    get(http, format!("{}/stock/{sku}", stack.inventory_url)).await["available"]
        .as_i64()
        .unwrap()
}

/// `POST /transactions?wait=20` with the 2PC checkout: the status and the transaction.
async fn run_2pc(http: &reqwest::Client, stack: &TestStack, input: Value) -> (u16, Value) {
    let r = http
        .post(format!("{}/transactions?wait=20", stack.orchestrator_url))
        .json(&json!({ "protocol": "2pc", "definition": "checkout", "input": input }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// What each service's audit endpoint lists for `order`: (reservations, payments, shipments).
async fn effects(http: &reqwest::Client, stack: &TestStack, order: &str) -> [Vec<Value>; 3] {
    let list = |base: &str, path: &str| format!("{base}/{path}?order_id={order}");
    let as_vec = |v: Value| v.as_array().cloned().unwrap_or_default();
    [
        as_vec(get(http, list(&stack.inventory_url, "reservations")).await),
        as_vec(get(http, list(&stack.payment_url, "payments")).await),
        as_vec(get(http, list(&stack.shipping_url, "shipments")).await),
    ]
}

/// No service holds a prepared transaction any more.
async fn nothing_prepared(http: &reqwest::Client, stack: &TestStack) {
    for url in [
        &stack.inventory_url,
        &stack.payment_url,
        &stack.shipping_url,
    ] {
        let status = get(http, format!("{url}/2pc/status")).await;
        assert_eq!(status["can_prepare"], true, "{status}");
        assert_eq!(status["prepared"], json!([]), "{url}: {status}");
    }
}

/// A fresh stack with 10 `widget`s in stock.
async fn start(name: &str) -> (TestStack, reqwest::Client) {
    let (stack, _client) = tandem_tests::in_process(name, |_| {}).await;
    let http = reqwest::Client::new();
    set_stock(&http, &stack, "widget", 10).await;
    (stack, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2pc_checkout_commits_in_all_three_services() {
    let (stack, http) = start("tpc_commit").await;

    let (status, t) = run_2pc(
        &http,
        &stack,
        checkout_input("t-1", "widget", 2, "tok_visa", "FR"),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["state"], "committed", "{t}");
    assert_eq!(available(&http, &stack, "widget").await, 8);
    let [reservations, payments, shipments] = effects(&http, &stack, "t-1").await;
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
    nothing_prepared(&http, &stack).await;
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_vote_aborts_everything_and_sagas_share_the_business_key() {
    let (stack, http) = start("tpc_abort").await;

    // Payment votes NO (declined card): stock unchanged, no charge, no shipment.
    let (_, t) = run_2pc(
        &http,
        &stack,
        checkout_input("t-2", "widget", 2, "tok_decline", "FR"),
    )
    .await;
    assert_eq!(t["state"], "aborted", "{t}");
    assert_eq!(available(&http, &stack, "widget").await, 10);
    let [reservations, payments, shipments] = effects(&http, &stack, "t-2").await;
    assert!(reservations.is_empty() && payments.is_empty() && shipments.is_empty());

    // Shipping votes NO (undeliverable): the same.
    let (_, t) = run_2pc(
        &http,
        &stack,
        checkout_input("t-3", "widget", 1, "tok_visa", "ZZ"),
    )
    .await;
    assert_eq!(t["state"], "aborted", "{t}");
    assert_eq!(available(&http, &stack, "widget").await, 10);

    // A saga cannot take an order id a transaction holds.
    let r = http
        .post(format!("{}/sagas", stack.orchestrator_url))
        .json(&json!({ "definition": "checkout",
                       "input": checkout_input("t-2", "widget", 1, "tok_visa", "FR") }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "{:?}", r.text().await);

    // The saga checkout still works with the coordinator-allocated reservation id.
    let r = http
        .post(format!("{}/sagas?wait=20", stack.orchestrator_url))
        .json(&json!({ "definition": "checkout",
                       "input": checkout_input("s-1", "widget", 1, "tok_visa", "FR") }))
        .send()
        .await
        .unwrap();
    let saga: Value = r.json().await.unwrap();
    assert_eq!(saga["status"], "completed", "{saga}");
    assert_eq!(available(&http, &stack, "widget").await, 9);
    nothing_prepared(&http, &stack).await;
    stack.stop().await.unwrap();
}
