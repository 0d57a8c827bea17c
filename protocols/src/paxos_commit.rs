//! Paxos Commit (Gray & Lamport, "Consensus on Transaction Commit").
//!
//! Nodes: resource managers `P0..P{n-1}` (participants; `P0` initiates), acceptors
//! `A0..A{2F}`, and leaders `C0..C{L-1}` (`C0` is the default leader that receives
//! `BeginCommit`; the others only step in with higher ballots).
//!
//! One Paxos instance per participant decides whether that participant is `Prepared` or
//! `Aborted`; the transaction commits iff every instance chose `Prepared`.
//!
//! - Ballot 0 of instance `i` belongs to participant `i`: it forces [`Record::Prepared`], then
//!   sends `Phase2a(0, Prepared)` straight to every acceptor (no phase 1 needed).
//! - An acceptor accepts a 2a whose ballot is at least its promise, and in the fast path
//!   answers with **one** `Phase2b` bundling all instances once it has a value for each.
//!   Before any reply it forces a snapshot of its state ([`Record::Acceptor`]) if it changed,
//!   so one forced write covers the whole bundle.
//! - A value is chosen in an instance when F+1 acceptors accepted it in the same ballot; a
//!   leader that learns every instance's value decides and tells the participants.
//! - A leader that times out picks its next ballot (leader `k` of `L` owns `k+1, k+1+L, ...`),
//!   forces it ([`Record::Ballot`], so a restart never reuses a ballot), runs phase 1 for the
//!   undecided instances, and proposes for each the value of the highest ballot reported, or
//!   `Aborted` if none was reported. Leaders keep nothing else durable.
//!
//! With F = 0 and the single acceptor on the leader's host the message flow is exactly 2PC's
//! (see [`crate::sim`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::{Action, Actions, Input, NodeId, Outcome, Role, System, Vote};

/// The value of one participant's instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    Prepared,
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Msg {
    /// Initiating participant → default leader.
    BeginCommit,
    /// Leader → participant: "prepare and vote".
    Prepare,
    /// Participant (ballot 0, its own instance) or leader (higher ballot) → acceptors.
    Phase2a {
        ballot: u8,
        values: Vec<(u8, Value)>,
    },
    /// Acceptor → leader: accepted `(instance, ballot, value)` triples.
    Phase2b { accepted: Vec<(u8, u8, Value)> },
    /// Leader → acceptors.
    Phase1a { ballot: u8, instances: Vec<u8> },
    /// Acceptor → leader: per promised instance, the highest-ballot value it accepted.
    Phase1b {
        ballot: u8,
        reports: Vec<(u8, Option<(u8, Value)>)>,
    },
    /// Leader → participant: the decision.
    Outcome(Outcome),
    /// In-doubt participant → leaders.
    Query,
}

/// An acceptor's state for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub promised: u8,
    pub accepted: Option<(u8, Value)>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Record {
    /// Participant: voted YES (forced before its ballot-0 2a).
    Prepared,
    /// Participant: learned the outcome (lazy: it can always be learned again).
    Outcome(Outcome),
    /// Acceptor: snapshot of every instance (forced before any reply).
    Acceptor(Vec<Slot>),
    /// Leader: a ballot it started (forced before its 1a).
    Ballot(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Participant: abort if not asked to prepare in time.
    VoteDeadline,
    /// Participant: ask the leaders for the outcome.
    InDoubt,
    /// Leader: no decision yet — start a higher ballot.
    Progress,
}

/// Static shape of one Paxos Commit instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub n: u8,
    pub f: u8,
    pub leaders: u8,
    /// Leaders never use a ballot above this (a model-checking bound; `u8::MAX` in practice).
    pub max_ballot: u8,
}

impl Shape {
    fn acceptors(&self) -> impl Iterator<Item = NodeId> {
        (0..2 * self.f + 1).map(NodeId::Acceptor)
    }
    fn participants(&self) -> impl Iterator<Item = NodeId> {
        (0..self.n).map(NodeId::Participant)
    }
    fn leaders(&self) -> impl Iterator<Item = NodeId> {
        (0..self.leaders).map(NodeId::Coordinator)
    }
}

type Out = Vec<Action<Msg, Record, Timer>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RmState {
    Working,
    Prepared,
    Committed,
    Aborted,
}

/// A resource manager (participant).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rm {
    pub shape: Shape,
    pub id: u8,
    pub vote: Vote,
    pub state: RmState,
}

impl Rm {
    fn phase2a(&self, v: Value) -> Out {
        self.shape
            .acceptors()
            .map(|a| {
                Action::send(
                    a,
                    Msg::Phase2a {
                        ballot: 0,
                        values: vec![(self.id, v)],
                    },
                )
            })
            .collect()
    }

    fn vote(&mut self, initiating: bool) -> Out {
        let mut out = vec![Action::CancelTimer(Timer::VoteDeadline)];
        match self.vote {
            Vote::Yes => {
                self.state = RmState::Prepared;
                out.insert(0, Action::ForceWrite(Record::Prepared));
                if initiating {
                    out.push(Action::send(NodeId::Coordinator(0), Msg::BeginCommit));
                }
                out.extend(self.phase2a(Value::Prepared));
                out.push(Action::SetTimer(Timer::InDoubt));
            }
            Vote::No => out.extend(self.abort_alone()),
        }
        out
    }

    /// Abort before voting YES: safe, since ballot 0 of our instance can then never carry
    /// `Prepared`.
    fn abort_alone(&mut self) -> Out {
        self.state = RmState::Aborted;
        let mut out = vec![Action::Decide(Outcome::Abort)];
        out.extend(self.phase2a(Value::Aborted));
        out
    }

    fn handle(&mut self, input: Input<Msg, Timer>) -> Out {
        match (self.state, input) {
            (RmState::Working, Input::Begin) => self.vote(true),
            (
                RmState::Working,
                Input::Receive {
                    msg: Msg::Prepare, ..
                },
            ) => self.vote(false),
            (
                RmState::Prepared,
                Input::Receive {
                    msg: Msg::Prepare, ..
                },
            ) => self.phase2a(Value::Prepared),
            (
                RmState::Working | RmState::Prepared,
                Input::Receive {
                    msg: Msg::Outcome(o),
                    ..
                },
            ) => {
                self.state = match o {
                    Outcome::Commit => RmState::Committed,
                    Outcome::Abort => RmState::Aborted,
                };
                vec![
                    Action::Write(Record::Outcome(o)),
                    Action::CancelTimer(Timer::VoteDeadline),
                    Action::CancelTimer(Timer::InDoubt),
                    Action::Decide(o),
                ]
            }
            (RmState::Working, Input::Timeout(Timer::VoteDeadline)) => self.abort_alone(),
            (RmState::Prepared, Input::Timeout(Timer::InDoubt)) => {
                let mut out: Out = self
                    .shape
                    .leaders()
                    .map(|l| Action::send(l, Msg::Query))
                    .collect();
                out.push(Action::SetTimer(Timer::InDoubt));
                out
            }
            _ => vec![],
        }
    }

    pub fn recover(shape: Shape, id: u8, log: &[Record]) -> (Self, Out) {
        let mut rm = Rm {
            shape,
            id,
            vote: Vote::No,
            state: RmState::Aborted,
        };
        for r in log {
            if let Record::Outcome(o) = r {
                rm.state = if *o == Outcome::Commit {
                    RmState::Committed
                } else {
                    RmState::Aborted
                };
                return (rm, vec![]);
            }
        }
        if log.contains(&Record::Prepared) {
            rm.state = RmState::Prepared;
            rm.vote = Vote::Yes;
            let mut out = rm.phase2a(Value::Prepared);
            out.push(Action::SetTimer(Timer::InDoubt));
            (rm, out)
        } else {
            (rm, vec![Action::Decide(Outcome::Abort)])
        }
    }
}

/// An acceptor: one [`Slot`] per participant's instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Acceptor {
    pub shape: Shape,
    pub id: u8,
    pub slots: Vec<Slot>,
    /// State changed since the last forced snapshot.
    pub dirty: bool,
}

impl Acceptor {
    pub fn new(shape: Shape, id: u8) -> Self {
        Acceptor {
            shape,
            id,
            slots: vec![
                Slot {
                    promised: 0,
                    accepted: None
                };
                shape.n as usize
            ],
            dirty: false,
        }
    }

    pub fn recover(shape: Shape, id: u8, log: &[Record]) -> Self {
        let mut a = Acceptor::new(shape, id);
        for r in log {
            if let Record::Acceptor(s) = r {
                a.slots = s.clone();
            }
        }
        a
    }

    /// Persist-before-send: force a snapshot if anything changed, then send.
    fn reply(&mut self, to: NodeId, msg: Msg) -> Out {
        let mut out = vec![];
        if self.dirty {
            out.push(Action::ForceWrite(Record::Acceptor(self.slots.clone())));
            self.dirty = false;
        }
        out.push(Action::send(to, msg));
        out
    }

    fn handle(&mut self, input: Input<Msg, Timer>) -> Out {
        let Input::Receive { from, msg } = input else {
            return vec![];
        };
        match msg {
            Msg::Phase2a { ballot, values } => {
                let mut mine = vec![];
                for (i, v) in values {
                    let s = &mut self.slots[i as usize];
                    if ballot >= s.promised {
                        if s.accepted != Some((ballot, v)) || s.promised != ballot {
                            s.promised = ballot;
                            s.accepted = Some((ballot, v));
                            self.dirty = true;
                        }
                        mine.push((i, ballot, v));
                    }
                }
                if ballot == 0 {
                    // Fast path: one bundle for all instances, to the default leader.
                    if self.slots.iter().all(|s| s.accepted.is_some()) {
                        let accepted = self
                            .slots
                            .iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let (b, v) = s.accepted.unwrap();
                                (i as u8, b, v)
                            })
                            .collect();
                        return self.reply(NodeId::Coordinator(0), Msg::Phase2b { accepted });
                    }
                    vec![]
                } else if mine.is_empty() {
                    vec![]
                } else {
                    self.reply(from, Msg::Phase2b { accepted: mine })
                }
            }
            Msg::Phase1a { ballot, instances } => {
                let mut reports = vec![];
                for i in instances {
                    let s = &mut self.slots[i as usize];
                    if ballot > s.promised {
                        s.promised = ballot;
                        self.dirty = true;
                    }
                    if ballot == s.promised {
                        reports.push((i, s.accepted));
                    }
                }
                if reports.is_empty() {
                    vec![]
                } else {
                    self.reply(from, Msg::Phase1b { ballot, reports })
                }
            }
            _ => vec![],
        }
    }
}

/// Phase 1 bookkeeping of a leader's current ballot: per instance, which acceptors promised
/// and the highest-ballot accepted value they reported.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Phase1 {
    pub reports: BTreeMap<u8, (u8, Option<(u8, Value)>)>,
}

/// A leader (coordinator). Keeps nothing durable but the ballots it started.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    pub shape: Shape,
    pub idx: u8,
    pub started: bool,
    pub ballot: u8,
    pub phase1: Option<Phase1>,
    /// (instance, ballot, value) → bitmask of acceptors that accepted it.
    pub votes: BTreeMap<(u8, u8, Value), u8>,
    pub decided: Option<Outcome>,
}

impl Leader {
    pub fn new(shape: Shape, idx: u8) -> (Self, Out) {
        let l = Leader {
            shape,
            idx,
            started: false,
            ballot: 0,
            phase1: None,
            votes: BTreeMap::new(),
            decided: None,
        };
        (l, vec![Action::SetTimer(Timer::Progress)])
    }

    pub fn recover(shape: Shape, idx: u8, log: &[Record]) -> (Self, Out) {
        let (mut l, out) = Leader::new(shape, idx);
        for r in log {
            if let Record::Ballot(b) = r {
                l.ballot = l.ballot.max(*b);
            }
        }
        (l, out)
    }

    fn chosen(&self, i: u8) -> Option<Value> {
        let quorum = self.shape.f as u32 + 1;
        self.votes
            .iter()
            .find(|((inst, _, _), mask)| *inst == i && mask.count_ones() >= quorum)
            .map(|((_, _, v), _)| *v)
    }

    fn try_decide(&mut self) -> Out {
        if self.decided.is_some() {
            return vec![];
        }
        let chosen: Vec<_> = (0..self.shape.n).map(|i| self.chosen(i)).collect();
        let o = if chosen.contains(&Some(Value::Aborted)) {
            Outcome::Abort
        } else if chosen.iter().all(|c| *c == Some(Value::Prepared)) {
            Outcome::Commit
        } else {
            return vec![];
        };
        // Once decided, a leader only answers queries: its tallies are dead weight.
        self.decided = Some(o);
        self.phase1 = None;
        self.votes.clear();
        let mut out = vec![Action::CancelTimer(Timer::Progress), Action::Decide(o)];
        out.extend(
            self.shape
                .participants()
                .map(|p| Action::send(p, Msg::Outcome(o))),
        );
        out
    }

    fn next_ballot(&self) -> Option<u8> {
        let first = self.idx + 1;
        let mut b = first;
        while b <= self.ballot {
            b = b.checked_add(self.shape.leaders)?;
        }
        (b <= self.shape.max_ballot).then_some(b)
    }

    fn handle(&mut self, input: Input<Msg, Timer>) -> Out {
        match input {
            Input::Receive {
                msg: Msg::BeginCommit,
                ..
            } if !self.started => {
                self.started = true;
                self.shape
                    .participants()
                    .skip(1)
                    .map(|p| Action::send(p, Msg::Prepare))
                    .collect()
            }
            Input::Receive {
                from: NodeId::Acceptor(a),
                msg: Msg::Phase2b { accepted },
            } if self.decided.is_none() => {
                for (i, b, v) in accepted {
                    *self.votes.entry((i, b, v)).or_insert(0) |= 1 << a;
                }
                self.try_decide()
            }
            Input::Receive {
                from: NodeId::Acceptor(a),
                msg: Msg::Phase1b { ballot, reports },
            } => {
                if ballot != self.ballot || self.decided.is_some() {
                    return vec![];
                }
                let Some(p1) = self.phase1.as_mut() else {
                    return vec![];
                };
                for (i, acc) in reports {
                    if let Some((mask, best)) = p1.reports.get_mut(&i) {
                        *mask |= 1 << a;
                        if acc.map(|x| x.0) > best.map(|x| x.0) {
                            *best = acc;
                        }
                    }
                }
                let quorum = self.shape.f as u32 + 1;
                if p1
                    .reports
                    .values()
                    .all(|(mask, _)| mask.count_ones() >= quorum)
                {
                    let values: Vec<_> = p1
                        .reports
                        .iter()
                        .map(|(i, (_, best))| (*i, best.map_or(Value::Aborted, |x| x.1)))
                        .collect();
                    self.phase1 = None;
                    self.shape
                        .acceptors()
                        .map(|acc| {
                            Action::send(
                                acc,
                                Msg::Phase2a {
                                    ballot,
                                    values: values.clone(),
                                },
                            )
                        })
                        .collect()
                } else {
                    vec![]
                }
            }
            Input::Receive {
                from,
                msg: Msg::Query,
            } => match self.decided {
                Some(o) => vec![Action::send(from, Msg::Outcome(o))],
                None => vec![],
            },
            Input::Timeout(Timer::Progress) if self.decided.is_none() => {
                let Some(b) = self.next_ballot() else {
                    return vec![];
                };
                self.ballot = b;
                let instances: Vec<u8> = (0..self.shape.n)
                    .filter(|i| self.chosen(*i).is_none())
                    .collect();
                self.phase1 = Some(Phase1 {
                    reports: instances.iter().map(|i| (*i, (0, None))).collect(),
                });
                let mut out = vec![Action::ForceWrite(Record::Ballot(b))];
                out.extend(self.shape.acceptors().map(|acc| {
                    Action::send(
                        acc,
                        Msg::Phase1a {
                            ballot: b,
                            instances: instances.clone(),
                        },
                    )
                }));
                out.push(Action::SetTimer(Timer::Progress));
                out
            }
            _ => vec![],
        }
    }
}

/// A Paxos Commit node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Participant(Rm),
    Acceptor(Acceptor),
    Leader(Leader),
}

impl Role for Node {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;

    fn handle(&mut self, input: Input<Msg, Timer>) -> Actions<Self> {
        match self {
            Node::Participant(r) => r.handle(input),
            Node::Acceptor(a) => a.handle(input),
            Node::Leader(l) => l.handle(input),
        }
    }
}

/// A Paxos Commit instance.
#[derive(Clone, Debug)]
pub struct PaxosCommit {
    pub shape: Shape,
}

impl PaxosCommit {
    pub fn new(n: u8, f: u8, leaders: u8, max_ballot: u8) -> Self {
        PaxosCommit {
            shape: Shape {
                n,
                f,
                leaders,
                max_ballot,
            },
        }
    }
}

impl System for PaxosCommit {
    type Node = Node;

    fn nodes(&self) -> Vec<NodeId> {
        let s = self.shape;
        s.leaders()
            .chain(s.participants())
            .chain(s.acceptors())
            .collect()
    }

    fn participants(&self) -> Vec<NodeId> {
        self.shape.participants().collect()
    }

    fn boot(&self, id: NodeId, vote: Vote) -> (Node, Actions<Node>) {
        let s = self.shape;
        match id {
            NodeId::Participant(i) => (
                Node::Participant(Rm {
                    shape: s,
                    id: i,
                    vote,
                    state: RmState::Working,
                }),
                vec![Action::SetTimer(Timer::VoteDeadline)],
            ),
            NodeId::Acceptor(i) => (Node::Acceptor(Acceptor::new(s, i)), vec![]),
            NodeId::Coordinator(i) => {
                let (l, out) = Leader::new(s, i);
                (Node::Leader(l), out)
            }
        }
    }

    fn recover(&self, id: NodeId, log: &[Record]) -> (Node, Actions<Node>) {
        let s = self.shape;
        match id {
            NodeId::Participant(i) => {
                let (r, out) = Rm::recover(s, i, log);
                (Node::Participant(r), out)
            }
            NodeId::Acceptor(i) => (Node::Acceptor(Acceptor::recover(s, i, log)), vec![]),
            NodeId::Coordinator(i) => {
                let (l, out) = Leader::recover(s, i, log);
                (Node::Leader(l), out)
            }
        }
    }

    fn is_yes_record(&self, record: &Record) -> bool {
        *record == Record::Prepared
    }

    /// An acceptor needs only its newest snapshot, a leader only its highest ballot.
    fn compact_log(&self, id: NodeId, log: &mut Vec<Record>) {
        match id {
            NodeId::Acceptor(_) => {
                let keep = log.len().saturating_sub(1);
                log.drain(..keep);
            }
            NodeId::Coordinator(_) => {
                let max = log.iter().filter_map(|r| match r {
                    Record::Ballot(b) => Some(*b),
                    _ => None,
                });
                let max = max.max();
                log.clear();
                log.extend(max.map(Record::Ballot));
            }
            NodeId::Participant(_) => log.dedup(),
        }
    }
}

/// Acceptors are interchangeable: they all get every 2a and 1a, and leaders count them only
/// through quorum sizes. Renaming one renames its id and the bits leaders keep for it.
impl crate::model::AcceptorSymmetry for Node {
    fn rename_acceptors(&mut self, perm: &[u8]) {
        let remask = |mask: u8| {
            (0..perm.len())
                .filter(|i| mask & (1 << i) != 0)
                .fold(0u8, |m, i| m | (1 << perm[i]))
        };
        match self {
            Node::Participant(_) => {}
            Node::Acceptor(a) => a.id = perm[a.id as usize],
            Node::Leader(l) => {
                for mask in l.votes.values_mut() {
                    *mask = remask(*mask);
                }
                if let Some(p1) = l.phase1.as_mut() {
                    for (mask, _) in p1.reports.values_mut() {
                        *mask = remask(*mask);
                    }
                }
            }
        }
    }

    fn hash_view_of_acceptor<H: std::hash::Hasher>(&self, a: u8, h: &mut H) {
        use std::hash::Hash;
        match self {
            Node::Participant(_) => {}
            Node::Acceptor(acc) => (&acc.slots, acc.dirty).hash(h),
            Node::Leader(l) => {
                for (k, mask) in &l.votes {
                    (k, mask >> a & 1).hash(h);
                }
                if let Some(p1) = &l.phase1 {
                    for (k, (mask, _)) in &p1.reports {
                        (k, mask >> a & 1).hash(h);
                    }
                }
            }
        }
    }
}
