//! The choreographed checkout on the real binaries (inventory, payment, shipping with their
//! outbox relays and durable consumers, the orders entry point) over a private
//! `nats-server -js`: `kill -9` of each process — each service's relay lives in its process, so
//! each kill is also a relay's — and a restart of the NATS server, in the middle of many
//! checkouts. Afterwards every checkout is completed or fully compensated, with exactly one
//! charge or a charge and its refund, one live shipment per completed order, and no oversold
//! stock. Size: `TANDEM_CHOREO_ORDERS` (default 24).

use std::time::Duration;

use serde_json::Value;
use tandem_cli::client::{Client, checkout_input};
use tandem_kit::choreo::nats_testing::PrivateNats;
use tandem_tests::cluster::{Cluster, ClusterConfig};

const HEALTHY: Duration = Duration::from_secs(60);
const STOCK: i64 = 12;

fn orders_count() -> usize {
    std::env::var("TANDEM_CHOREO_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// Order `i`: most succeed (while stock lasts), every fifth card is declined, every seventh
/// address undeliverable.
fn order(i: usize) -> (String, Value) {
    let id = format!("ck-{i}");
    let card = if i % 5 == 4 {
        "tok_decline"
    } else {
        "tok_visa"
    };
    let country = if i % 7 == 6 { "ZZ" } else { "GB" };
    let input = checkout_input(&id, "ck-sku", 1, card, country);
    (id, input)
}

/// Place an order at the entry point, retrying while it is down (killed): 201 or 200 (the same
/// order placed before its answer was lost).
async fn place(http: &reqwest::Client, orders: &str, body: &Value) {
    for _ in 0..200 {
        if let Ok(r) = http
            .post(format!("{orders}/orders"))
            .json(body)
            .send()
            .await
        {
            let status = r.status().as_u16();
            assert!(status == 201 || status == 200, "POST /orders: {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the orders service did not come back");
}

/// The order's terminal status at the entry point (long polls, retried while it restarts).
async fn settled(http: &reqwest::Client, orders: &str, id: &str) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let url = format!("{orders}/orders/{id}?wait_ms=5000");
        if let Ok(r) = http.get(url).send().await
            && let Ok(v) = r.json::<Value>().await
            && matches!(v["status"].as_str(), Some("completed" | "compensated"))
        {
            return v["status"].as_str().map(str::to_owned);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn count(list: &[Value], field: &str, value: &str) -> usize {
    list.iter().filter(|v| v[field] == value).count()
}

/// Every order settled at the entry point, and its effects in the services' records consistent
/// with its status: the violations, and how many orders completed.
async fn audit(
    c: &Client,
    http: &reqwest::Client,
    orders: &str,
    all: &[(String, Value)],
) -> (Vec<String>, i64) {
    let mut problems = Vec::new();
    let mut held = 0;
    for (id, _) in all {
        let Some(status) = settled(http, orders, id).await else {
            problems.push(format!("{id}: not settled"));
            continue;
        };
        let res = c.reservations(id).await.unwrap();
        let pays = c.payments(id).await.unwrap();
        let ships = c.shipments(id).await.unwrap();
        let (charges, refunds) = (
            count(&pays, "kind", "charge"),
            count(&pays, "kind", "refund"),
        );
        let live = count(&ships, "status", "created");
        let ok = match status.as_str() {
            "completed" => {
                held += 1;
                res.len() == 1
                    && count(&res, "status", "held") == 1
                    && (charges, refunds, live) == (1, 0, 1)
            }
            _ => {
                count(&res, "status", "held") == 0
                    && charges <= 1
                    && charges == refunds
                    && live == 0
            }
        };
        if !ok {
            problems.push(format!(
                "{id} {status}: reservations {res:?}, payments {pays:?}, shipments {ships:?}"
            ));
        }
    }
    (problems, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_process_and_a_nats_restart_leave_every_checkout_consistent() {
    let Some(mut nats) = PrivateNats::start().await else {
        return;
    };
    let mut cfg = ClusterConfig::new("choreokill", 0);
    cfg.nats_url = Some(nats.url.clone());
    cfg.step_timeout_ms = 8_000;
    let mut cluster = Cluster::new(cfg);
    cluster.start_all();
    cluster.wait_all_healthy(HEALTHY).await;
    let (inv, pay, ship, ord) = (
        cluster.service("inventory"),
        cluster.service("payment"),
        cluster.service("shipping"),
        cluster.orders(),
    );
    let orders = cluster.url(ord);
    let c = Client::new(
        &orders,
        &cluster.url(inv),
        &cluster.url(pay),
        &cluster.url(ship),
    )
    .with_token(&cluster.tokens.as_ref().expect("tokens").operator);
    assert_eq!(c.set_stock("ck-sku", STOCK).await.unwrap().status, 200);
    let http = reqwest::Client::builder()
        .default_headers(tandem_tests::http_headers(
            cluster.tokens.as_ref().map(|t| t.client.as_str()),
        ))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Orders are placed in waves; between waves one process is killed (SIGKILL) and restarted,
    // or the NATS server is, while the earlier waves' events are in flight.
    let n = orders_count();
    let all: Vec<(String, Value)> = (0..n).map(order).collect();
    let waves: Vec<&[(String, Value)]> = all.chunks(n.div_ceil(6).max(1)).collect();
    for (w, wave) in waves.iter().enumerate() {
        futures::future::join_all(wave.iter().map(|(_, body)| place(&http, &orders, body))).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        match w {
            0 => cluster.start(inv, None), // start() kills the running process first
            1 => cluster.start(pay, None),
            2 => cluster.start(ship, None),
            3 => cluster.start(ord, None),
            4 => nats.restart().await,
            _ => {}
        }
    }

    let (mut problems, held) = audit(&c, &http, &orders, &all).await;
    let stock = c.stock("ck-sku").await.unwrap();
    let available = stock["available"].as_i64().unwrap();
    if available < 0 || available + held != STOCK {
        problems.push(format!(
            "stock {stock}: {held} completed orders hold one each of {STOCK}"
        ));
    }
    assert!(
        problems.is_empty(),
        "{} violation(s) (logs in {}):\n{}",
        problems.len(),
        cluster.log_dir.display(),
        problems.join("\n")
    );
    assert!(held > 0, "no checkout completed: the test saw no success");
    cluster.assert_all_running();
}
