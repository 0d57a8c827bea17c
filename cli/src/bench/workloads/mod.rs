//! The workloads, one module each. A workload prepares the stack (definitions, data), makes the
//! measured operation through Tandem and, if there is one, the direct baseline (the same work
//! without Tandem); the measuring itself is shared ([`super::measure`]).
//!
//! To add a workload: a module here implementing [`Load`], a variant of [`Workload`] and its arm
//! in [`Workload::load`].

pub mod checkout;
pub mod checkout_2pc;
pub mod checkout_choreo;
pub mod noop;

use std::sync::Arc;

use clap::ValueEnum;
use clap::builder::PossibleValue;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};

use super::measure::{Op, Timings, get, post};
use super::target::Target;
use super::{BenchArgs, RequestMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// The shipped checkout definition as a saga: reserve stock, charge, ship (real SQL +
    /// barrier).
    Checkout,
    /// The same checkout as one 2PC transaction (`POST /transactions`, prepared transactions
    /// in the three services).
    #[value(name = "checkout-2pc")]
    #[serde(rename = "checkout_2pc")]
    Checkout2pc,
    /// The same checkout as one 3PC transaction (CanCommit, PreCommit, DoCommit; the
    /// participants' termination protocol among the services).
    #[value(name = "checkout-3pc")]
    #[serde(rename = "checkout_3pc")]
    Checkout3pc,
    /// The same checkout as one quorum-based 3PC transaction (`3pc-quorum`: PreAbort, commit
    /// and abort quorums of 2 of 3).
    #[value(name = "checkout-3pc-quorum")]
    #[serde(rename = "checkout_3pc_quorum")]
    Checkout3pcQuorum,
    /// The same checkout choreographed: `POST /orders` at the orders entry point, events on NATS
    /// JetStream (needs `--nats-url`), until the entry point sees the terminal event.
    #[value(name = "checkout-choreo")]
    #[serde(rename = "checkout_choreo")]
    CheckoutChoreo,
    /// The same checkout as one Paxos Commit transaction (needs `--acceptors 3`).
    #[value(name = "checkout-paxos")]
    #[serde(rename = "checkout_paxos")]
    CheckoutPaxos,
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
    /// For an atomic commit protocol: its number of participants N (for the formulas).
    fn commit_participants(&self) -> Option<usize> {
        None
    }
    /// Choreographed (events on NATS, the orders entry point) rather than orchestrated.
    fn choreographed(&self) -> bool {
        false
    }
}

impl Workload {
    pub fn load(self, args: &BenchArgs) -> Box<dyn Load> {
        match self {
            Workload::Checkout => Box::new(checkout::Checkout {
                orders: checkout::Orders::of(args),
            }),
            Workload::Checkout2pc => Box::new(checkout_2pc::CheckoutCommit {
                protocol: "2pc",
                orders: checkout::Orders::of(args),
            }),
            Workload::Checkout3pc => Box::new(checkout_2pc::CheckoutCommit {
                protocol: "3pc",
                orders: checkout::Orders::of(args),
            }),
            Workload::Checkout3pcQuorum => Box::new(checkout_2pc::CheckoutCommit {
                protocol: "3pc-quorum",
                orders: checkout::Orders::of(args),
            }),
            Workload::CheckoutPaxos => Box::new(checkout_2pc::CheckoutCommit {
                protocol: "paxos-commit",
                orders: checkout::Orders::of(args),
            }),
            Workload::CheckoutChoreo => Box::new(checkout_choreo::CheckoutChoreo {
                orders: checkout::Orders::of(args),
            }),
            Workload::Noop => Box::new(noop::Noop),
        }
    }

    /// Its name on the command line (`checkout-2pc`).
    pub fn label(self) -> String {
        self.to_possible_value().as_ref().map_or_else(
            || format!("{self:?}"),
            |v| PossibleValue::get_name(v).to_string(),
        )
    }
}

/// A new order id, unique across runs.
pub fn order_id() -> String {
    format!("o-{}", uuid::Uuid::now_v7().simple())
}

/// Ok (with what the run reports) if the answer is a 2xx and `settled` accepts its body.
fn settle_result(
    status: u16,
    body: &Value,
    settled: fn(&Value) -> Result<Timings, String>,
) -> Result<Timings, String> {
    if !(200..300).contains(&status) {
        return Err(format!("http {status}"));
    }
    settled(body)
}

/// A saga's answer: Ok only if it completed.
fn saga_completed(body: &Value) -> Result<Timings, String> {
    match body["status"].as_str() {
        Some("completed") => Ok(Timings::new()),
        Some(s) => Err(format!("saga {s}")),
        None => Err("no status".into()),
    }
}

/// The orchestrated operation of a run of the orchestrator's collection `runs` (`sagas`,
/// `transactions`): `POST /{runs}` with the body `body(client, seq)` makes, until the run is
/// terminal; `settled` judges the terminal body.
pub fn run_op(
    t: &Target,
    mode: RequestMode,
    runs: &'static str,
    body: impl Fn(usize, u64) -> Value + Send + Sync + 'static,
    settled: fn(&Value) -> Result<Timings, String>,
) -> Op {
    let http = t.http.clone();
    let base = format!("{}/{runs}", t.url("orchestrator"));
    let body = Arc::new(body);
    Arc::new(move |client, seq| {
        let (http, base) = (http.clone(), base.clone());
        let body = body(client, seq);
        Box::pin(async move {
            if mode == RequestMode::PostWait {
                let (status, v) = post(&http, &format!("{base}?wait=30"), None, &body).await?;
                return settle_result(status, &v, settled);
            }
            let (status, v) = post(&http, &base, None, &body).await?;
            if status != 201 {
                return Err(format!("http {status}"));
            }
            let id = v["id"].as_str().ok_or("no id")?;
            let (status, v) = get(&http, &format!("{base}/{id}?wait=30")).await?;
            settle_result(status, &v, settled)
        })
    })
}

/// The orchestrated operation of a saga workload: start saga `definition` with the input
/// `input(client, seq)` makes, until it is terminal; Ok only if it completed.
pub fn saga_op(
    t: &Target,
    mode: RequestMode,
    definition: &'static str,
    input: impl Fn(usize, u64) -> Value + Send + Sync + 'static,
) -> Op {
    let body = move |client, seq| json!({ "definition": definition, "input": input(client, seq) });
    run_op(t, mode, "sagas", body, saga_completed)
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
