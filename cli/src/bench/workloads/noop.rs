//! `noop`: two steps calling `POST /noop` on inventory and payment, no database work in the
//! services — the orchestrator's own cost, like DTM's empty branches.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Load, direct_step, order_id, saga_op};
use crate::bench::RequestMode;
use crate::bench::measure::{Op, Timings};
use crate::bench::target::Target;

const DEFINITION: &str = r#"{
  "name": "bench_noop",
  "description": "Benchmark: two steps with no effect (POST /noop on inventory and payment), like DTM's empty branches.",
  "steps": [
    { "name": "first",
      "action": { "service": "inventory", "method": "POST", "path": "/noop" },
      "compensation": { "service": "inventory", "method": "POST", "path": "/noop" } },
    { "name": "second",
      "action": { "service": "payment", "method": "POST", "path": "/noop" },
      "compensation": { "service": "payment", "method": "POST", "path": "/noop" } }
  ]
}"#;

pub struct Noop;

async fn register(t: &Target) -> anyhow::Result<()> {
    let def: Value = serde_json::from_str(DEFINITION)?;
    let r = t
        .http
        .post(format!("{}/definitions", t.url("orchestrator")))
        .json(&def)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "registering the no-op definition: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

impl Load for Noop {
    fn prepare<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, anyhow::Result<()>> {
        register(t).boxed()
    }

    fn orchestrated(&self, t: &Target, mode: RequestMode) -> Op {
        saga_op(
            t,
            mode,
            "bench_noop",
            |_, _| json!({ "order_id": order_id() }),
        )
    }

    fn direct(&self, t: &Target) -> Option<Op> {
        let http = t.direct_http.clone();
        let steps = [
            (format!("{}/noop", t.url("inventory")), "first"),
            (format!("{}/noop", t.url("payment")), "second"),
        ];
        Some(Arc::new(move |_, _| {
            let (http, steps) = (http.clone(), steps.clone());
            Box::pin(async move {
                let id = uuid::Uuid::now_v7().to_string();
                let body = Value::Null;
                for (url, step) in &steps {
                    direct_step(&http, url, &id, step, &body).await?;
                }
                Ok(Timings::new())
            })
        }))
    }
}
