//! `checkout`: the shipped checkout definition — reserve stock, charge, ship — on the real
//! services (SQL and barrier), orders spread over `skus` SKUs seeded with ample stock.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Load, direct_step, order_id, saga_op};
use crate::bench::RequestMode;
use crate::bench::measure::{Op, Timings};
use crate::bench::target::Target;
use crate::client::checkout_input;

pub struct Checkout {
    pub orders: Orders,
}

/// Which SKUs the orders go to: spread over `skus` (concurrent clients rarely touch the same
/// stock row), or, with `hot` above 0, only the first `hot` of them, shared by every client.
#[derive(Debug, Clone, Copy)]
pub struct Orders {
    pub skus: usize,
    pub hot: usize,
}

impl Orders {
    pub fn of(args: &crate::bench::BenchArgs) -> Self {
        Orders {
            skus: args.skus,
            hot: args.hot_skus.min(args.skus),
        }
    }

    /// The input of client `client`'s `seq`-th checkout: one unit of a SKU that depends on
    /// both.
    pub fn input(self, client: usize, seq: u64) -> Value {
        let i = if self.hot > 0 {
            (client + seq as usize) % self.hot
        } else {
            (client * 7919 + seq as usize) % self.skus.max(1)
        };
        checkout_input(&order_id(), &sku(i), 1, "tok_visa", "GB")
    }
}

fn sku(i: usize) -> String {
    format!("bench-sku-{i:05}")
}

pub(super) async fn seed(t: &Target, skus: usize) -> anyhow::Result<()> {
    let inv = t.url("inventory").to_string();
    futures::future::try_join_all((0..skus).map(|i| {
        let http = t.http.clone();
        let url = format!("{inv}/stock/{}", sku(i));
        async move {
            let r = http
                .put(url)
                .json(&json!({ "available": 1_000_000_000_000i64 }))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "seeding stock: {}", r.status());
            Ok(())
        }
    }))
    .await?;
    Ok(())
}

/// DTM's baseline: the client calls each step's action itself, in sequence, with the keys the
/// orchestrator would use.
async fn direct_checkout(
    http: reqwest::Client,
    urls: [String; 3],
    input: Value,
) -> Result<Timings, String> {
    let id = uuid::Uuid::now_v7().to_string();
    let [inv, pay, ship] = urls;
    let step = async |url: String, name: &str, body: &Value| {
        direct_step(&http, &url, &id, name, body).await
    };
    let reserve = json!({ "order_id": input["order_id"], "items": input["items"] });
    let reservation = step(format!("{inv}/reservations"), "reserve_inventory", &reserve).await?;
    let charge = json!({
        "order_id": input["order_id"], "customer_id": input["customer_id"],
        "amount_cents": input["amount_cents"], "currency": input["currency"],
        "card_token": input["payment"]["card_token"],
    });
    step(format!("{pay}/charges"), "charge_payment", &charge).await?;
    let shipment = json!({
        "order_id": input["order_id"], "address": input["shipping"]["address"],
        "items": input["items"], "reservation_id": reservation["reservation_id"],
    });
    step(format!("{ship}/shipments"), "create_shipment", &shipment).await?;
    Ok(Timings::new())
}

impl Load for Checkout {
    fn prepare<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, anyhow::Result<()>> {
        seed(t, self.orders.skus).boxed()
    }

    fn orchestrated(&self, t: &Target, mode: RequestMode) -> Op {
        let orders = self.orders;
        saga_op(t, mode, "checkout", move |client, seq| {
            orders.input(client, seq)
        })
    }

    fn direct(&self, t: &Target) -> Option<Op> {
        let (http, orders) = (t.direct_http.clone(), self.orders);
        let urls = ["inventory", "payment", "shipping"].map(|s| t.url(s).to_string());
        Some(Arc::new(move |client, seq| {
            Box::pin(direct_checkout(
                http.clone(),
                urls.clone(),
                orders.input(client, seq),
            ))
        }))
    }
}
