//! The operator's way out when a transaction's coordinator never comes back: a **heuristic
//! decision** (`POST /transactions/{id}/resolve`, `tandem commit resolve`). It goes through the
//! same door as every decision: the instance takes the transaction's lease (bumping the epoch,
//! which fences the owner's own decision write), writes the decision with the new epoch — with
//! who, when and why in the transaction's log — and then runs the transaction's coordinator
//! here, recovered from that log, so the normal broadcast tells every participant.
//!
//! It never overrides a logged decision (a different one is a conflict; the same one is
//! answered as already logged), and a commit needs every participant's YES vote in the log.

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::store::{self, Message, Progress};
use super::{Coordinator, TxnRow, TxnState};
use crate::error::{Error, Result};
use crate::lease::Take;

/// The decision an operator forces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Heuristic {
    Commit,
    Abort,
}

impl Heuristic {
    pub fn as_str(self) -> &'static str {
        match self {
            Heuristic::Commit => "commit",
            Heuristic::Abort => "abort",
        }
    }
}

/// Who decides what, and why.
#[derive(Debug, Clone)]
pub struct Resolve {
    pub decision: Heuristic,
    pub reason: String,
    pub operator: String,
}

/// What a resolve did.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Logged now; the participants are being told.
    Recorded,
    /// The same decision was already logged: nothing recorded.
    AlreadyLogged,
    /// Another decision is logged: nothing recorded.
    Conflict { logged: String },
    /// Commit asked, but this participant's YES vote is not in the log: nothing recorded.
    NotAllYes { step: String, vote: Option<String> },
}

/// The kind of the log entry that records a heuristic decision.
pub const HEURISTIC_KIND: &str = "heuristic_decision";

impl Coordinator {
    /// Force `r.decision` on transaction `id` (see the module doc).
    pub async fn resolve(self: &Arc<Self>, id: Uuid, r: &Resolve) -> Result<Resolution> {
        let pool = self.pool().clone();
        loop {
            let row = store::get(&pool, id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no transaction {id}")))?;
            if let Some(logged) = row.decision {
                return Ok(if logged == r.decision.as_str() {
                    Resolution::AlreadyLogged
                } else {
                    Resolution::Conflict { logged }
                });
            }
            if r.decision == Heuristic::Commit
                && let Some(p) = row
                    .participants
                    .iter()
                    .find(|p| p.vote.as_deref() != Some("yes"))
            {
                // Votes only ever go from none to yes or no: all YES now stays all YES.
                return Ok(Resolution::NotAllYes {
                    step: p.step.clone(),
                    vote: p.vote.clone(),
                });
            }
            let previous_owner = row.lease.owner;
            let Some(row) = self
                .work
                .leases
                .take::<TxnRow>(id, Take::Steal, "decision IS NULL")
                .await?
            else {
                continue; // decided meanwhile: answer what was
            };
            if self.record(row, r, previous_owner).await? {
                return Ok(Resolution::Recorded);
            }
        }
    }

    /// Write the heuristic decision with the epoch just taken, then run the coordinator here.
    /// False: another instance took the lease in between (nothing written).
    async fn record(
        self: &Arc<Self>,
        mut row: TxnRow,
        r: &Resolve,
        previous_owner: Option<String>,
    ) -> Result<bool> {
        let state = match r.decision {
            Heuristic::Commit => TxnState::Committing,
            Heuristic::Abort => TxnState::Aborting,
        };
        let entry = Message {
            at: Utc::now(),
            peer: "operator".into(),
            dir: "in".into(),
            kind: HEURISTIC_KIND.into(),
            detail: json!({
                "decision": r.decision.as_str(), "reason": r.reason, "operator": r.operator,
                "instance": self.work.leases.owner(), "epoch": row.lease.epoch,
                "previous_owner": previous_owner,
            }),
        };
        let progress = Progress {
            state,
            decision: Some(r.decision.as_str()),
            participants: &row.participants,
            messages: std::slice::from_ref(&entry),
        };
        if !store::progress(self.pool(), row.id, row.lease.epoch, &progress).await? {
            return Ok(false);
        }
        tracing::warn!(
            txn = %row.id, decision = r.decision.as_str(), operator = %r.operator,
            reason = %r.reason, epoch = row.lease.epoch,
            "HEURISTIC DECISION by an operator: the coordinator's own decision is fenced off"
        );
        row.decision = Some(r.decision.as_str().into());
        row.state = state;
        self.run(row, false);
        Ok(true)
    }
}
