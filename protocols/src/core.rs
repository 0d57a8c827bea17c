//! The sans-IO vocabulary shared by every protocol core: node ids, inputs, actions, the
//! [`Role`] trait a role's state machine implements, and the [`System`] trait that describes
//! one protocol instance (which nodes exist, how each boots and recovers) to the model checker
//! and to the in-memory network.
//!
//! A driver runs a role like this (the same loop serves the in-memory network, the stateright
//! model and a later HTTP + Postgres driver):
//!
//! 1. feed one [`Input`] (a message, a timer firing, the application's "commit") to
//!    [`Role::handle`], or build the role from its stable log with the protocol's `recover`;
//! 2. execute the returned [`Action`]s **in order**. A [`Action::ForceWrite`] must be durable
//!    before any action after it in the same batch is performed, so "persist, then send" is
//!    enforced by the order of the batch, not by the driver's good will.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::hash::Hash;

/// A process taking part in one atomic commit.
///
/// `Coordinator(i)` is the 2PC/3PC transaction manager or the i-th Paxos Commit leader,
/// `Participant(i)` a resource manager (participant 0 initiates the commit), `Acceptor(i)` a
/// Paxos Commit acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeId {
    Coordinator(u8),
    Participant(u8),
    Acceptor(u8),
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeId::Coordinator(i) => write!(f, "C{i}"),
            NodeId::Participant(i) => write!(f, "P{i}"),
            NodeId::Acceptor(i) => write!(f, "A{i}"),
        }
    }
}

/// The outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Commit,
    Abort,
}

/// What a participant's local work says when asked to prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Vote {
    Yes,
    No,
}

/// An event fed into a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input<M, T> {
    /// The application on the initiating participant asks to commit.
    Begin,
    /// A message arrived (possibly a duplicate, possibly late).
    Receive { from: NodeId, msg: M },
    /// A timer armed with [`Action::SetTimer`] fired.
    Timeout(T),
}

/// An effect requested by a role. Executed in order; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action<M, R, T> {
    /// Append `R` to stable storage and wait until it is durable (fsync / committed row)
    /// before performing any later action of the same batch.
    ForceWrite(R),
    /// Append `R` to stable storage lazily: it may be lost if the process crashes before a
    /// later force flushes it. The protocols are correct if it is lost.
    Write(R),
    /// Send `msg` to `to`. Links may lose, duplicate and reorder; cores are idempotent.
    Send { to: NodeId, msg: M },
    /// Arm (or re-arm) a timer; when it fires, feed [`Input::Timeout`]. Durations are the
    /// driver's business.
    SetTimer(T),
    /// Disarm a timer (no-op if not armed).
    CancelTimer(T),
    /// This process now knows the outcome (a participant may apply / roll back its work).
    Decide(Outcome),
    /// The transaction may be dropped from memory and its log garbage-collected.
    Forget,
}

impl<M, R, T> Action<M, R, T> {
    pub fn send(to: NodeId, msg: M) -> Self {
        Action::Send { to, msg }
    }
}

/// Convenience alias for a role's action batch.
pub type Actions<N> = Vec<Action<<N as Role>::Msg, <N as Role>::Record, <N as Role>::Timer>>;

/// Bounds shared by every wire / log type: hashable and ordered for the model checker,
/// serialisable for a real driver.
pub trait Wire:
    Clone + Debug + Hash + Eq + Ord + Send + Sync + Serialize + DeserializeOwned + 'static
{
}
impl<T> Wire for T where
    T: Clone + Debug + Hash + Eq + Ord + Send + Sync + Serialize + DeserializeOwned + 'static
{
}

/// One role's state machine (a coordinator, a participant, an acceptor ...).
///
/// A role says what it does with each kind of [`Input`]; [`Role::handle`] routes an input to
/// the right one, so the receive / timer plumbing is written once, here.
pub trait Role: Clone + Debug + Hash + Eq + Send + Sync + 'static {
    type Msg: Wire;
    type Record: Wire;
    type Timer: Wire;

    /// The application asks to commit ([`Input::Begin`]). Ignored unless the role initiates.
    fn on_begin(&mut self) -> Actions<Self> {
        Vec::new()
    }

    /// A message arrived ([`Input::Receive`]); possibly a duplicate, possibly late.
    fn on_message(&mut self, from: NodeId, msg: Self::Msg) -> Actions<Self>;

    /// A timer armed with [`Action::SetTimer`] fired ([`Input::Timeout`]).
    fn on_timeout(&mut self, _timer: Self::Timer) -> Actions<Self> {
        Vec::new()
    }

    /// Feed one input; returns the actions to perform, in order.
    fn handle(&mut self, input: Input<Self::Msg, Self::Timer>) -> Actions<Self> {
        match input {
            Input::Begin => self.on_begin(),
            Input::Receive { from, msg } => self.on_message(from, msg),
            Input::Timeout(t) => self.on_timeout(t),
        }
    }
}

/// How a role of protocol `S` starts: fresh, or rebuilt from its stable log after a crash.
/// `id` is the node being started (a role reads its index from it).
pub trait Start<S>: Role {
    /// A fresh node with an empty log. `vote` is used only by participants.
    fn start(sys: &S, id: NodeId, vote: Vote) -> (Self, Actions<Self>);
    /// A node rebuilt from its stable log after a crash.
    fn restart(sys: &S, id: NodeId, log: &[Self::Record]) -> (Self, Actions<Self>);
}

impl NodeId {
    /// The index within the node's kind (`P2` → 2).
    pub fn index(self) -> u8 {
        match self {
            NodeId::Coordinator(i) | NodeId::Participant(i) | NodeId::Acceptor(i) => i,
        }
    }
}

/// One node of a protocol, whichever role it plays: the coordinator (or leader) role `C`, the
/// participant role `P` and, for protocols that have them, the acceptor role `A`. Routes every
/// input and every start to the role the node plays, so no protocol writes that dispatch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node<C, P, A = Absent<C>> {
    Coordinator(C),
    Participant(P),
    Acceptor(A),
}

/// The acceptor role of a protocol that has none: no value of this type exists.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Absent<C> {
    #[doc(hidden)]
    Never(std::convert::Infallible, std::marker::PhantomData<C>),
}

impl<C: Role> Role for Absent<C> {
    type Msg = C::Msg;
    type Record = C::Record;
    type Timer = C::Timer;

    fn on_message(&mut self, _: NodeId, _: C::Msg) -> Actions<Self> {
        match self {
            Absent::Never(never, _) => match *never {},
        }
    }
}

impl<S, C: Role> Start<S> for Absent<C> {
    fn start(_: &S, id: NodeId, _: Vote) -> (Self, Actions<Self>) {
        panic!("{id}: this protocol has no acceptors")
    }
    fn restart(_: &S, id: NodeId, _: &[C::Record]) -> (Self, Actions<Self>) {
        panic!("{id}: this protocol has no acceptors")
    }
}

impl<C, P, A> Role for Node<C, P, A>
where
    C: Role,
    P: Role<Msg = C::Msg, Record = C::Record, Timer = C::Timer>,
    A: Role<Msg = C::Msg, Record = C::Record, Timer = C::Timer>,
{
    type Msg = C::Msg;
    type Record = C::Record;
    type Timer = C::Timer;

    fn on_message(&mut self, from: NodeId, msg: C::Msg) -> Actions<Self> {
        self.handle(Input::Receive { from, msg })
    }

    fn handle(&mut self, input: Input<C::Msg, C::Timer>) -> Actions<Self> {
        match self {
            Node::Coordinator(c) => c.handle(input),
            Node::Participant(p) => p.handle(input),
            Node::Acceptor(a) => a.handle(input),
        }
    }
}

impl<S, C, P, A> Start<S> for Node<C, P, A>
where
    C: Start<S>,
    P: Start<S> + Role<Msg = C::Msg, Record = C::Record, Timer = C::Timer>,
    A: Start<S> + Role<Msg = C::Msg, Record = C::Record, Timer = C::Timer>,
{
    fn start(sys: &S, id: NodeId, vote: Vote) -> (Self, Actions<Self>) {
        match id {
            NodeId::Coordinator(_) => wrap(C::start(sys, id, vote), Node::Coordinator),
            NodeId::Participant(_) => wrap(P::start(sys, id, vote), Node::Participant),
            NodeId::Acceptor(_) => wrap(A::start(sys, id, vote), Node::Acceptor),
        }
    }

    fn restart(sys: &S, id: NodeId, log: &[C::Record]) -> (Self, Actions<Self>) {
        match id {
            NodeId::Coordinator(_) => wrap(C::restart(sys, id, log), Node::Coordinator),
            NodeId::Participant(_) => wrap(P::restart(sys, id, log), Node::Participant),
            NodeId::Acceptor(_) => wrap(A::restart(sys, id, log), Node::Acceptor),
        }
    }
}

fn wrap<R, N, M, Rec, T>(
    (role, out): (R, Vec<Action<M, Rec, T>>),
    f: impl FnOnce(R) -> N,
) -> (N, Vec<Action<M, Rec, T>>) {
    (f(role), out)
}

/// One protocol instance: which nodes exist and how each one starts and recovers.
/// Implemented by [`crate::two_phase::TwoPc`], [`crate::three_phase::ThreePc`] and
/// [`crate::paxos_commit::PaxosCommit`].
pub trait System: Clone + Debug + Send + Sync + 'static {
    type Node: Start<Self>;

    /// Every node, participants included.
    fn nodes(&self) -> Vec<NodeId>;
    /// The participants (resource managers) whose decisions must agree.
    fn participants(&self) -> Vec<NodeId> {
        let nodes = self.nodes().into_iter();
        nodes
            .filter(|n| matches!(n, NodeId::Participant(_)))
            .collect()
    }
    /// The node that receives [`Input::Begin`].
    fn initiator(&self) -> NodeId {
        NodeId::Participant(0)
    }
    /// A fresh node with an empty log. `vote` is used only by participants.
    fn boot(&self, id: NodeId, vote: Vote) -> (Self::Node, Actions<Self::Node>) {
        Self::Node::start(self, id, vote)
    }
    /// A node rebuilt from its stable log after a crash.
    fn recover(
        &self,
        id: NodeId,
        log: &[<Self::Node as Role>::Record],
    ) -> (Self::Node, Actions<Self::Node>) {
        Self::Node::restart(self, id, log)
    }
    /// Whether this record is a participant's durable YES vote.
    fn is_yes_record(&self, record: &<Self::Node as Role>::Record) -> bool;
    /// Drop records that recovery no longer needs (a driver may truncate its log the same
    /// way). The default keeps one copy of each record: every protocol here recovers from the
    /// set of records it has, not from their multiplicity.
    fn compact_log(&self, _id: NodeId, log: &mut Vec<<Self::Node as Role>::Record>) {
        let mut seen = Vec::with_capacity(log.len());
        log.retain(|r| {
            if seen.contains(r) {
                false
            } else {
                seen.push(r.clone());
                true
            }
        });
    }
    /// The peer a timer waits for, if the protocol's fault model only lets timers fire when
    /// that peer has failed (3PC's synchronous assumption). `None`: may fire at any time.
    fn timer_awaits(&self, _timer: &<Self::Node as Role>::Timer) -> Option<NodeId> {
        None
    }
}

/// Participants `P0..P{n-1}`.
pub fn participants(n: u8) -> impl Iterator<Item = NodeId> {
    (0..n).map(NodeId::Participant)
}

/// Coordinator `C0` and participants `P0..P{n-1}`: the nodes of 2PC and 3PC.
pub fn coordinator_and_participants(n: u8) -> Vec<NodeId> {
    std::iter::once(NodeId::Coordinator(0))
        .chain(participants(n))
        .collect()
}
