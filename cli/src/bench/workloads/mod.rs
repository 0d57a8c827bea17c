//! The workloads, one module each. A workload prepares the stack (definitions, data), makes the
//! measured operation through Tandem and, if there is one, the direct baseline (the same work
//! without Tandem); the measuring itself is shared ([`super::measure`]).
//!
//! To add a workload: a module here implementing [`Load`], a variant of [`Workload`] and its arm
//! in [`Workload::load`].

pub mod checkout;
pub mod noop;

use std::sync::Arc;

use clap::ValueEnum;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};

use super::measure::{Op, get, post};
use super::target::Target;
use super::{BenchArgs, RequestMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// The shipped checkout definition: reserve stock, charge, ship (real SQL + barrier).
    Checkout,
    /// Two steps calling `POST /noop` on inventory and payment (no database work).
    Noop,
}

/// What a workload does.
pub trait Load: Send + Sync {
    /// Register definitions, seed data: once, before priming and measuring.
    fn prepare<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, anyhow::Result<()>>;
    /// The measured operation through Tandem.
    fn orchestrated(&self, t: &Target, mode: RequestMode) -> Op;
    /// The same work without Tandem (the client calls the services itself), if it has one.
    fn direct(&self, t: &Target) -> Option<Op>;
}

impl Workload {
    pub fn load(self, args: &BenchArgs) -> Box<dyn Load> {
        match self {
            Workload::Checkout => Box::new(checkout::Checkout { skus: args.skus }),
            Workload::Noop => Box::new(noop::Noop),
        }
    }

    pub fn label(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// A new order id, unique across runs.
pub fn order_id() -> String {
    format!("o-{}", uuid::Uuid::now_v7().simple())
}

fn settle_result(status: u16, body: &Value) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(format!("http {status}"));
    }
    match body["status"].as_str() {
        Some("completed") => Ok(()),
        Some(s) => Err(format!("saga {s}")),
        None => Err("no status".into()),
    }
}

/// The orchestrated operation of a saga workload: start saga `definition` with the input
/// `input(client, seq)` makes, until it is terminal; Ok only if it completed.
pub fn saga_op(
    t: &Target,
    mode: RequestMode,
    definition: &'static str,
    input: impl Fn(usize, u64) -> Value + Send + Sync + 'static,
) -> Op {
    let http = t.http.clone();
    let base = t.url("orchestrator").to_string();
    let input = Arc::new(input);
    Arc::new(move |client, seq| {
        let (http, base) = (http.clone(), base.clone());
        let body = json!({ "definition": definition, "input": input(client, seq) });
        Box::pin(async move {
            if mode == RequestMode::PostWait {
                let (status, v) =
                    post(&http, &format!("{base}/sagas?wait=30"), None, &body).await?;
                return settle_result(status, &v);
            }
            let (status, v) = post(&http, &format!("{base}/sagas"), None, &body).await?;
            if status != 201 {
                return Err(format!("http {status}"));
            }
            let id = v["id"].as_str().ok_or("no id")?;
            let (status, v) = get(&http, &format!("{base}/sagas/{id}?wait=30")).await?;
            settle_result(status, &v)
        })
    })
}

/// One step of a direct baseline: `POST url` with the saga's key for `step`'s action (the
/// services run their barrier as usual); the answer's body if 2xx.
pub async fn direct_step(
    http: &reqwest::Client,
    url: &str,
    saga_id: &str,
    step: &str,
    body: &Value,
) -> Result<Value, String> {
    let key = format!("{saga_id}:{step}:action");
    let (status, v) = post(http, url, Some(&key), body).await?;
    if !(200..300).contains(&status) {
        return Err(format!("{step}: http {status}"));
    }
    Ok(v)
}
