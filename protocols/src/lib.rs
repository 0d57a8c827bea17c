//! Tandem's atomic commit protocol cores: pure, sans-IO state machines (inputs in, actions
//! out, as in tikv/raft-rs), model-checked with stateright and compared on a deterministic
//! in-memory network. No tokio, no SQL, no HTTP in this crate, and nothing here can fail: a
//! core answers every input, expected or not, with a (possibly empty) batch of actions, so
//! the crate has no error type.
//!
//! Where things live:
//! - [`core`]: the shared vocabulary — [`NodeId`], [`Input`], [`Action`] (`ForceWrite`,
//!   `Write`, `Send`, `SetTimer`, `CancelTimer`, `Decide`, `Forget`), the action batch
//!   [`Actions`], the [`Protocol`] trait that names a protocol's messages, records and timers
//!   once, the [`Role`] trait every role implements (it routes each input to
//!   `on_begin` / `on_message` / `on_timeout`), the [`Start`] trait (fresh start and restart
//!   from the stable log), the generic [`core::Node`] that makes one node type of a protocol's
//!   roles, and the [`System`] trait describing one protocol instance.
//! - [`two_phase`]: 2PC with presumed abort (coordinator, participant).
//! - [`three_phase`]: Skeen's 3PC with timeouts and the termination protocol run by a
//!   recovery coordinator elected among the live participants.
//! - [`quorum_three_phase`]: Skeen's quorum-based 3PC (commit and abort quorums, the
//!   PreAborted state): safe under partitions that change, blocking instead of splitting.
//! - [`paxos_commit`]: Gray & Lamport's Paxos Commit (resource managers, 2F+1 acceptors,
//!   leaders with higher ballots).
//! - `model` (feature `model`): the stateright model that drives any [`System`] under a fault model
//!   (crash-stop / crash-recovery, loss, duplication, reordering, partitions, synchronous or
//!   asynchronous timers), its state-space reductions (acceptor symmetry) and readable traces.
//!   Only the model knows the checker: no core module imports it (the `model` feature, which
//!   this crate's tests switch on; servers do not compile the checker). The checks themselves are
//!   in `tests/model_check.rs`.
//! - [`sim`]: the deterministic in-memory network that runs the failure-free path and counts
//!   messages, message delays and forced writes; [`sim::compare`] backs
//!   `tandem commit compare`.
//!
//! `docs/commit-protocols.md` explains the protocols, their fault models and the figures.
//!
//! # A driver loop
//!
//! A driver feeds each event to the node it is for and executes the returned batch in order:
//! it makes every [`Action::ForceWrite`] durable **before** performing any later action of the
//! same batch (so "persist, then send" is the order of the batch), then sends, arms timers and
//! applies decisions. After a crash it rebuilds the node from its stable log with `recover`.
//! Here a whole 2PC transaction runs on a queue standing in for the network:
//!
//! ```
//! use std::collections::{BTreeMap, VecDeque};
//! use tandem_protocols::two_phase::{Record, TwoPc};
//! use tandem_protocols::{Action, Input, NodeId, Outcome, Role, System, Vote};
//!
//! let sys = TwoPc::coordinator_begins(3); // the orchestrator starts it
//! let mut nodes = BTreeMap::new();
//! for id in sys.nodes() {
//!     let (node, _timers) = sys.boot(id, Vote::Yes); // each participant's local work is done
//!     nodes.insert(id, node);
//! }
//! let mut stable_log: BTreeMap<NodeId, Vec<Record>> = BTreeMap::new();
//! let mut decided = BTreeMap::new();
//! // Events in: the application asks to commit; then whatever the network delivers.
//! let mut events = VecDeque::from([(sys.initiator(), Input::Begin)]);
//! while let Some((to, input)) = events.pop_front() {
//!     // Actions out, executed in order.
//!     for action in nodes.get_mut(&to).unwrap().handle(input) {
//!         match action {
//!             // Durable before anything after it (an fsync, a committed row, PREPARE TRANSACTION).
//!             Action::ForceWrite(r) => stable_log.entry(to).or_default().push(r),
//!             Action::Write(r) => stable_log.entry(to).or_default().push(r), // lazily
//!             Action::Send { to: dest, msg } => {
//!                 events.push_back((dest, Input::Receive { from: to, msg }))
//!             }
//!             Action::Decide(outcome) => {
//!                 decided.insert(to, outcome); // e.g. COMMIT PREPARED
//!             }
//!             // Timers: arm / disarm; when one fires, feed `Input::Timeout(timer)`.
//!             Action::SetTimer(_) | Action::CancelTimer(_) | Action::Forget => {}
//!         }
//!     }
//! }
//! assert!(sys.participants().iter().all(|p| decided[p] == Outcome::Commit));
//! assert_eq!(
//!     stable_log[&NodeId::Coordinator(0)],
//!     [Record::Begin, Record::Commit, Record::End]
//! );
//! ```

pub mod core;
#[cfg(feature = "model")]
pub mod model;
pub mod paxos_commit;
pub mod quorum_three_phase;
pub mod sim;
pub mod three_phase;
pub mod two_phase;

pub use crate::core::{
    Action, Actions, Input, NodeId, Outcome, Protocol, Role, Start, System, Vote,
};
