//! Tandem's atomic commit protocol cores: pure, sans-IO state machines (inputs in, actions
//! out, as in tikv/raft-rs), model-checked with stateright and compared on a deterministic
//! in-memory network. No tokio, no SQL, no HTTP in this crate.
//!
//! Where things live:
//! - [`core`]: the shared vocabulary — [`NodeId`], [`Input`], [`Action`] (`ForceWrite`,
//!   `Write`, `Send`, `SetTimer`, `CancelTimer`, `Decide`, `Forget`), the [`Role`] trait every
//!   role implements and the [`System`] trait describing one protocol instance.
//! - [`two_phase`]: 2PC with presumed abort (coordinator, participant).
//! - [`three_phase`]: Skeen's 3PC with timeouts and the termination protocol run by a
//!   recovery coordinator elected among the live participants.
//! - [`paxos_commit`]: Gray & Lamport's Paxos Commit (resource managers, 2F+1 acceptors,
//!   leaders with higher ballots).
//! - [`model`]: the stateright model that drives any [`System`] under a fault model
//!   (crash-stop / crash-recovery, loss, duplication, reordering, a partition, synchronous or
//!   asynchronous timers) and prints readable traces. The checks themselves are in
//!   `tests/model_check.rs`.
//! - [`sim`]: the deterministic in-memory network that runs the failure-free path and counts
//!   messages, message delays and forced writes; [`sim::compare`] backs
//!   `tandem commit compare`.
//!
//! `docs/commit-protocols.md` explains the protocols, their fault models and the figures.

pub mod core;
pub mod model;
pub mod paxos_commit;
pub mod sim;
pub mod three_phase;
pub mod two_phase;

pub use crate::core::{Action, Actions, Input, NodeId, Outcome, Role, System, Vote};
