//! `checkout-2pc`, `checkout-3pc`, `checkout-3pc-quorum` and `checkout-paxos`: the shipped
//! checkout as one atomic commit transaction (`POST /transactions` `{"protocol": "2pc" | "3pc" |
//! "3pc-quorum" | "paxos-commit",
//! "definition": "checkout", …}`):
//! each service runs the saga action's effect in a Postgres transaction it prepares, and
//! commits it when the coordinator (2PC) or the leader, once the acceptors chose (Paxos
//! Commit), says so. The same orders and SKUs as `checkout`. Each transaction reports how long
//! each participant held its locks ([`crate::bench::commit::lock_holds`]). No direct baseline.
//! Paxos Commit needs acceptors beside the stack (`--acceptors 3`).

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::checkout::{self, Orders};
use super::{Load, run_op};
use crate::bench::RequestMode;
use crate::bench::commit::lock_holds;
use crate::bench::measure::{Op, Timings};
use crate::bench::target::Target;
use crate::launch::SERVICES;

/// The checkout as one transaction of `protocol` (the orchestrator's `"protocol"` field).
pub struct CheckoutCommit {
    pub protocol: &'static str,
    pub orders: Orders,
}

/// Every service must be able to prepare (its Postgres' `max_prepared_transactions` above 0).
async fn require_prepared_transactions(t: &Target) -> anyhow::Result<()> {
    for s in SERVICES {
        let status = t.get_json(s, "/2pc/status").await?;
        anyhow::ensure!(
            status["can_prepare"] == json!(true),
            "{s} cannot prepare transactions (max_prepared_transactions = {}): raise it above 0 \
             (e.g. 256, then restart Postgres), or leave out the 2PC workload \
             (--workloads checkout,noop)",
            status["max_prepared_transactions"]
        );
    }
    Ok(())
}

/// A transaction's answer: Ok, with each participant's lock-hold time, only if it committed.
pub fn committed(body: &Value) -> Result<Timings, String> {
    match body["state"].as_str() {
        Some("committed") => Ok(lock_holds(body)),
        Some(s) => Err(format!("transaction {s}")),
        None => Err("no state".into()),
    }
}

/// The number of participants: the shipped checkout definition's steps.
pub fn checkout_steps() -> usize {
    serde_json::from_str::<Value>(orchestrator::CHECKOUT_DEFINITION)
        .ok()
        .and_then(|d| d["steps"].as_array().map(Vec::len))
        .unwrap_or(0)
}

impl Load for CheckoutCommit {
    fn prepare<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            require_prepared_transactions(t).await?;
            checkout::seed(t, self.orders.skus).await
        }
        .boxed()
    }

    fn orchestrated(&self, t: &Target, mode: RequestMode) -> Op {
        let (orders, protocol) = (self.orders, self.protocol);
        let body = move |client, seq| {
            json!({
                "protocol": protocol,
                "definition": "checkout",
                "input": orders.input(client, seq),
            })
        };
        run_op(t, mode, "transactions", body, committed)
    }

    fn direct(&self, _: &Target) -> Option<Op> {
        None
    }

    /// The 2PC formulas only: Paxos Commit's are `tandem commit compare --live`'s.
    fn commit_participants(&self) -> Option<usize> {
        (self.protocol == "2pc").then(checkout_steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_committed_transaction_counts_and_it_reports_lock_holds() {
        let t = json!({ "state": "committed", "participants": [
            { "service": "payment", "prepared_at": "2026-11-30T10:00:00Z",
              "finished_at": "2026-11-30T10:00:00.002Z" } ] });
        let holds = committed(&t).unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].0, "lock hold payment");
        assert_eq!(
            committed(&json!({ "state": "aborted" })).unwrap_err(),
            "transaction aborted"
        );
        assert_eq!(committed(&json!({})).unwrap_err(), "no state");
        assert_eq!(checkout_steps(), 3);
    }
}
