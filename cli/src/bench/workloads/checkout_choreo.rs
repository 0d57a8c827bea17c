//! `checkout-choreo`: the same checkout as `checkout`, choreographed — `POST /orders` at the
//! orders entry point, then a long poll (`GET /orders/{id}?wait_ms=`) until the entry point has
//! seen the terminal event (`booked`): the latency is from the entry request to that. No
//! orchestrator on the path; the events go through NATS JetStream (the bench counts them,
//! [`super::super::events`]). The same SKUs and inputs as `checkout`, so the two compare.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::Load;
use super::checkout::{Orders, seed};
use crate::bench::RequestMode;
use crate::bench::measure::{Op, Timings, get, post};
use crate::bench::target::Target;

pub struct CheckoutChoreo {
    pub orders: Orders,
}

impl Load for CheckoutChoreo {
    fn prepare<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, anyhow::Result<()>> {
        seed(t, self.orders.skus).boxed()
    }

    /// One request to place the order, one long poll for its end (the entry point answers
    /// `POST /orders` at once: there is no "wait" on the placing request).
    fn orchestrated(&self, t: &Target, _mode: RequestMode) -> Op {
        let (http, orders) = (t.http.clone(), self.orders);
        let base = format!("{}/orders", t.url("orders"));
        Arc::new(move |client, seq| {
            let (http, base) = (http.clone(), base.clone());
            let body = orders.input(client, seq);
            Box::pin(async move {
                let (status, v) = post(&http, &base, None, &body).await?;
                if status != 201 {
                    return Err(format!("http {status}"));
                }
                let id = v["order_id"].as_str().ok_or("no order id")?;
                let (status, v) = get(&http, &format!("{base}/{id}?wait_ms=30000")).await?;
                match (status, v["status"].as_str()) {
                    (200, Some("completed")) => Ok(Timings::new()),
                    (200, Some(s)) => Err(format!("order {s}")),
                    _ => Err(format!("http {status}")),
                }
            })
        })
    }

    fn direct(&self, _t: &Target) -> Option<Op> {
        None
    }

    fn choreographed(&self) -> bool {
        true
    }
}
