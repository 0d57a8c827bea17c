//! The 2PC commit coordinator: a definition (e.g. the checkout) run as one atomic commit across
//! its services, driven by the pure `tandem_protocols::two_phase` coordinator core (the
//! coordinator-initiated topology: it logs the transaction, then sends every Prepare in one
//! round), on the same leases as the sagas ([`crate::lease`], kind [`TRANSACTIONS`]).
//!
//! - here: the row ([`TxnRow`], [`Part`] per participant), the lease kind;
//! - [`store`]: the coordinator log in Postgres — the row written at `POST /transactions` before
//!   any Prepare (the `Begin` record), the fenced decision write (`Commit` forced before any
//!   COMMIT is sent; presumed abort: no record means abort), progress and the message log;
//! - [`coordinator`]: [`Coordinator`] — the one entry point that begins a transaction, the
//!   "what was decided?" rule participants ask, and its part in the background loops;
//! - [`resolve`]: an operator's heuristic decision, through the same lease and fenced write;
//! - [`drive`]: one transaction's loop: feed the core, execute its actions (write, send, timers)
//!   and nothing else; `send`: the messages over HTTP.
//!
//! - [`three_phase`]: the 3PC coordinator (`"protocol": "3pc"`, and quorum-based 3PC:
//!   `"3pc-quorum"`; one driver over both cores), same rows and leases; the participants'
//!   timeouts and termination protocol run in the services.
//! - [`paxos`]: the Paxos Commit leader (`"protocol": "paxos-commit"`), on the same rows and
//!   leases, its ballots derived from the lease epoch.
//!
//! Who may decide: only the lease owner runs a transaction's coordinator. Another instance
//! asked for the decision answers a logged one; otherwise it first takes the lease (bumping the
//! epoch, which fences the owner's Commit write), writes Abort, and only then answers abort.

pub mod coordinator;
pub mod drive;
pub mod paxos;
pub mod resolve;
mod send;
pub mod store;
pub mod three_phase;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lease::{LeaseColumns, LeaseKind, RowLease};
use crate::store::RunColumns;

pub use coordinator::{Begin, Begun, Coordinator};

/// The NOTIFY channel of transaction hand-backs.
pub const TXN_CHANNEL: &str = "tandem_txn";

/// The transaction columns a claim returns.
macro_rules! txn_columns {
    () => {
        "id, protocol, definition, version, business_key, input, input_hash, state, decision, \
         decided_at, participants, next_run_at, lease_owner, lease_until, lease_epoch, \
         created_at, updated_at"
    };
}
pub(crate) use txn_columns;

/// 2PC transactions as a kind of leased work.
pub const TRANSACTIONS: LeaseKind = LeaseKind {
    name: "transaction",
    table: "transactions",
    columns: txn_columns!(),
    lease: LeaseColumns::STANDARD,
    channel: TXN_CHANNEL,
};

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    /// Logged; Prepares out, votes coming in.
    Preparing,
    /// Commit logged; COMMIT being delivered until every participant acknowledged.
    Committing,
    /// Abort decided; ABORT being delivered.
    Aborting,
    Committed,
    Aborted,
}

impl TxnState {
    pub const ALL: [TxnState; 5] = [
        TxnState::Preparing,
        TxnState::Committing,
        TxnState::Aborting,
        TxnState::Committed,
        TxnState::Aborted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Preparing => "preparing",
            TxnState::Committing => "committing",
            TxnState::Aborting => "aborting",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
        }
    }
    pub fn is_settled(self) -> bool {
        matches!(self, TxnState::Committed | TxnState::Aborted)
    }
}

impl TryFrom<String> for TxnState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        TxnState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown transaction state {s:?}"))
    }
}

/// One participant (a step of the definition): what the coordinator knows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub step: String,
    pub service: String,
    /// The action's path: the participant runs that action's effect in its prepare.
    pub action: String,
    /// `yes` / `no` once it voted.
    pub vote: Option<String>,
    /// pending → prepared | refused → committed | aborted
    pub state: String,
    pub prepared_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// A transaction as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TxnRow {
    pub id: Uuid,
    pub protocol: String,
    #[sqlx(flatten)]
    pub run: RunColumns,
    #[sqlx(try_from = "String")]
    pub state: TxnState,
    pub decision: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    #[sqlx(json)]
    pub participants: Vec<Part>,
    #[sqlx(flatten)]
    pub lease: RowLease,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl crate::lease::Leased for TxnRow {
    fn id(&self) -> Uuid {
        self.id
    }
    fn epoch(&self) -> i64 {
        self.lease.epoch
    }
}
