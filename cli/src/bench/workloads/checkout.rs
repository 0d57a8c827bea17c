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
    pub skus: usize,
}

fn sku(i: usize) -> String {
    format!("bench-sku-{i:05}")
}

/// The input of client `client`'s `seq`-th checkout: one unit of a SKU that depends on both,
/// so concurrent clients rarely touch the same row.
pub(super) fn input(skus: usize, client: usize, seq: u64) -> Value {
    let s = sku((client * 7919 + seq as usize) % skus.max(1));
    checkout_input(&order_id(), &s, 1, "tok_visa", "GB")
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
        seed(t, self.skus).boxed()
    }

    fn orchestrated(&self, t: &Target, mode: RequestMode) -> Op {
        let skus = self.skus;
        saga_op(t, mode, "checkout", move |client, seq| {
            input(skus, client, seq)
        })
    }

    fn direct(&self, t: &Target) -> Option<Op> {
        let (http, skus) = (t.http.clone(), self.skus);
        let urls = ["inventory", "payment", "shipping"].map(|s| t.url(s).to_string());
        Some(Arc::new(move |client, seq| {
            Box::pin(direct_checkout(
                http.clone(),
                urls.clone(),
                input(skus, client, seq),
            ))
        }))
    }
}
