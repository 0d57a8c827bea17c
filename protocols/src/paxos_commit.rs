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
//! - A leader runs under the lease epoch it holds on the transaction (the orchestrator's
//!   lease: unique per holder, increasing with every takeover). Its ballots are
//!   [`Ballot`]`{ epoch, round }`; one that times out starts its next round,
//!   forces it ([`Record::Ballot`], so a restart never reuses a ballot), runs phase 1 for the
//!   undecided instances, and proposes for each the value of the highest ballot reported, or
//!   `Aborted` if none was reported. Leaders keep nothing else durable.
//!
//! With F = 0 and the single acceptor on the leader's host the message flow is exactly 2PC's
//! (see [`crate::sim`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::{self, Action, Actions, NodeId, Outcome, Role, Start, System, Vote};

/// The value of one participant's instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    Prepared,
    Aborted,
}

/// A ballot: the lease epoch of the leader that runs it, then a round within that epoch,
/// ordered in that order. `Ballot::ZERO` belongs to the participants (each proposes its own
/// vote in its own instance). Leaders derive theirs from the transaction's lease, so ballots
/// are unique and increasing by construction, whichever orchestrator instances come and go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub epoch: u64,
    pub round: u32,
}

impl Ballot {
    pub const ZERO: Ballot = Ballot { epoch: 0, round: 0 };
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Msg {
    /// Initiating participant → default leader.
    BeginCommit,
    /// Leader → participant: "prepare and vote".
    Prepare,
    /// Participant (ballot 0, its own instance) or leader (higher ballot) → acceptors.
    Phase2a {
        ballot: Ballot,
        values: Vec<(u8, Value)>,
    },
    /// Acceptor → leader: accepted `(instance, ballot, value)` triples.
    Phase2b { accepted: Vec<(u8, Ballot, Value)> },
    /// Leader → acceptors.
    Phase1a { ballot: Ballot, instances: Vec<u8> },
    /// Acceptor → leader: per promised instance, the highest-ballot value it accepted.
    Phase1b {
        ballot: Ballot,
        reports: Vec<(u8, Option<(Ballot, Value)>)>,
    },
    /// Leader → participant: the decision.
    Outcome(Outcome),
    /// In-doubt participant → leaders.
    Query,
}

/// An acceptor's state for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub promised: Ballot,
    pub accepted: Option<(Ballot, Value)>,
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
    Ballot(Ballot),
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
    /// Rounds a leader may start within its lease epoch (a model-checking bound; `u32::MAX`
    /// in practice).
    pub max_rounds: u32,
    /// Who starts: `P0` (Gray & Lamport: its `BeginCommit` is its vote and the request), or
    /// the default leader `C0` (over HTTP: the orchestrator receives `POST /transactions` and
    /// sends `Prepare` to every participant).
    pub leader_begins: bool,
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
    fn phase2a(&self, v: Value) -> Actions<Self> {
        self.shape
            .acceptors()
            .map(|a| {
                Action::send(
                    a,
                    Msg::Phase2a {
                        ballot: Ballot::ZERO,
                        values: vec![(self.id, v)],
                    },
                )
            })
            .collect()
    }

    fn vote(&mut self, initiating: bool) -> Actions<Self> {
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
    fn abort_alone(&mut self) -> Actions<Self> {
        self.state = RmState::Aborted;
        let mut out = vec![Action::Decide(Outcome::Abort)];
        out.extend(self.phase2a(Value::Aborted));
        out
    }

    pub fn recover(shape: Shape, id: u8, log: &[Record]) -> (Self, Actions<Self>) {
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

impl Role for Rm {
    type Protocol = PaxosCommit;

    fn on_begin(&mut self) -> Actions<Self> {
        match self.state {
            RmState::Working => self.vote(true),
            _ => vec![],
        }
    }

    fn on_message(&mut self, _from: NodeId, msg: Msg) -> Actions<Self> {
        match (self.state, msg) {
            (RmState::Working, Msg::Prepare) => self.vote(false),
            (RmState::Prepared, Msg::Prepare) => self.phase2a(Value::Prepared),
            (RmState::Working | RmState::Prepared, Msg::Outcome(o)) => {
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
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, t: Timer) -> Actions<Self> {
        match (self.state, t) {
            (RmState::Working, Timer::VoteDeadline) => self.abort_alone(),
            (RmState::Prepared, Timer::InDoubt) => {
                let mut out: Actions<Self> = self
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
                    promised: Ballot::ZERO,
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
    fn reply(&mut self, to: NodeId, msg: Msg) -> Actions<Self> {
        let mut out = vec![];
        if self.dirty {
            out.push(Action::ForceWrite(Record::Acceptor(self.slots.clone())));
            self.dirty = false;
        }
        out.push(Action::send(to, msg));
        out
    }
}

impl Acceptor {
    /// Accept what the ballot allows. Ballot 0 (the fast path) answers with one bundle for
    /// every instance, to the default leader, once it has a value for each.
    fn on_phase2a(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        values: Vec<(u8, Value)>,
    ) -> Actions<Self> {
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
        if ballot == Ballot::ZERO {
            let all: Option<Vec<_>> = self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| s.accepted.map(|(b, v)| (i as u8, b, v)))
                .collect();
            match all {
                Some(accepted) => self.reply(NodeId::Coordinator(0), Msg::Phase2b { accepted }),
                None => vec![],
            }
        } else if mine.is_empty() {
            vec![]
        } else {
            self.reply(from, Msg::Phase2b { accepted: mine })
        }
    }

    fn on_phase1a(&mut self, from: NodeId, ballot: Ballot, instances: Vec<u8>) -> Actions<Self> {
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
}

impl Role for Acceptor {
    type Protocol = PaxosCommit;

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        match msg {
            Msg::Phase2a { ballot, values } => self.on_phase2a(from, ballot, values),
            Msg::Phase1a { ballot, instances } => self.on_phase1a(from, ballot, instances),
            _ => vec![],
        }
    }
}

/// Phase 1 bookkeeping of a leader's current ballot: per instance, which acceptors promised
/// and the highest-ballot accepted value they reported.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Phase1 {
    pub reports: BTreeMap<u8, (u8, Option<(Ballot, Value)>)>,
}

/// A leader (coordinator). Keeps nothing durable but the ballots it started.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    pub shape: Shape,
    /// The lease epoch under which this leader runs: its ballots are `(epoch, 1)`,
    /// `(epoch, 2)`, ...
    pub epoch: u64,
    pub started: bool,
    pub ballot: Ballot,
    pub phase1: Option<Phase1>,
    /// (instance, ballot, value) → bitmask of acceptors that accepted it.
    pub votes: BTreeMap<(u8, Ballot, Value), u8>,
    pub decided: Option<Outcome>,
}

impl Leader {
    /// A leader holding the transaction's lease with `epoch` (at least 1; epoch 0 is the
    /// participants' ballot).
    pub fn new(shape: Shape, epoch: u64) -> (Self, Actions<Self>) {
        assert!(epoch > 0, "lease epochs start at 1");
        let l = Leader {
            shape,
            epoch,
            started: false,
            ballot: Ballot::ZERO,
            phase1: None,
            votes: BTreeMap::new(),
            decided: None,
        };
        (l, vec![Action::SetTimer(Timer::Progress)])
    }

    /// Rebuild from the leader's log (the ballots it started), under the lease epoch the
    /// driver now holds: a new epoch after a takeover, or the same one if the process kept
    /// its lease.
    pub fn recover(shape: Shape, epoch: u64, log: &[Record]) -> (Self, Actions<Self>) {
        let (mut l, out) = Leader::new(shape, epoch);
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

    fn try_decide(&mut self) -> Actions<Self> {
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

    /// The next round of this leader's epoch. Unique across leaders because lease epochs
    /// are (a leader runs only under the epoch it holds), and higher than every ballot of an
    /// earlier lease holder because epochs increase.
    fn next_ballot(&self) -> Option<Ballot> {
        let round = match self.ballot.epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Less => 1,
            std::cmp::Ordering::Equal => self.ballot.round.checked_add(1)?,
            // Its log has a later epoch than the lease it holds: a stale holder; stay out.
            std::cmp::Ordering::Greater => return None,
        };
        (round <= self.shape.max_rounds).then_some(Ballot {
            epoch: self.epoch,
            round,
        })
    }

    fn on_phase1b(
        &mut self,
        a: u8,
        ballot: Ballot,
        reports: Vec<(u8, Option<(Ballot, Value)>)>,
    ) -> Actions<Self> {
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
        if !p1
            .reports
            .values()
            .all(|(mask, _)| mask.count_ones() >= quorum)
        {
            return vec![];
        }
        // Phase 2: the highest-ballot value reported, or Aborted where none was.
        let values: Vec<_> = p1
            .reports
            .iter()
            .map(|(i, (_, best))| (*i, best.map_or(Value::Aborted, |x| x.1)))
            .collect();
        self.phase1 = None;
        let msg = Msg::Phase2a { ballot, values };
        self.shape
            .acceptors()
            .map(|acc| Action::send(acc, msg.clone()))
            .collect()
    }

    /// Start phase 1 of the next ballot for the instances not known to be chosen.
    fn start_ballot(&mut self) -> Actions<Self> {
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
        let msg = Msg::Phase1a {
            ballot: b,
            instances,
        };
        let mut out = vec![Action::ForceWrite(Record::Ballot(b))];
        out.extend(
            self.shape
                .acceptors()
                .map(|acc| Action::send(acc, msg.clone())),
        );
        out.push(Action::SetTimer(Timer::Progress));
        out
    }
}

impl Leader {
    /// Ask participants to prepare: all of them when the leader begins, all but the initiating
    /// `P0` (whose `BeginCommit` was its vote) otherwise. Once per leader.
    fn send_prepares(&mut self, skip: usize) -> Actions<Self> {
        if self.started {
            return vec![];
        }
        self.started = true;
        self.shape
            .participants()
            .skip(skip)
            .map(|p| Action::send(p, Msg::Prepare))
            .collect()
    }
}

impl Role for Leader {
    type Protocol = PaxosCommit;

    /// The leader-begins topology: the application asks the leader to commit.
    fn on_begin(&mut self) -> Actions<Self> {
        if self.shape.leader_begins {
            self.send_prepares(0)
        } else {
            vec![]
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        match (from, msg) {
            (_, Msg::BeginCommit) if !self.shape.leader_begins => self.send_prepares(1),
            (NodeId::Acceptor(a), Msg::Phase2b { accepted }) if self.decided.is_none() => {
                for (i, b, v) in accepted {
                    *self.votes.entry((i, b, v)).or_insert(0) |= 1 << a;
                }
                self.try_decide()
            }
            (NodeId::Acceptor(a), Msg::Phase1b { ballot, reports }) => {
                self.on_phase1b(a, ballot, reports)
            }
            (_, Msg::Query) => match self.decided {
                Some(o) => vec![Action::send(from, Msg::Outcome(o))],
                None => vec![],
            },
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, t: Timer) -> Actions<Self> {
        match t {
            Timer::Progress if self.decided.is_none() => self.start_ballot(),
            _ => vec![],
        }
    }
}

impl Start<PaxosCommit> for Leader {
    fn start(sys: &PaxosCommit, id: NodeId, _: Vote) -> (Self, Actions<Self>) {
        Leader::new(sys.shape, u64::from(id.index()) + 1)
    }
    fn restart(sys: &PaxosCommit, id: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Leader::recover(sys.shape, u64::from(id.index()) + 1, log)
    }
}

impl Start<PaxosCommit> for Rm {
    fn start(sys: &PaxosCommit, id: NodeId, vote: Vote) -> (Self, Actions<Self>) {
        let rm = Rm {
            shape: sys.shape,
            id: id.index(),
            vote,
            state: RmState::Working,
        };
        (rm, vec![Action::SetTimer(Timer::VoteDeadline)])
    }
    fn restart(sys: &PaxosCommit, id: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Rm::recover(sys.shape, id.index(), log)
    }
}

impl Start<PaxosCommit> for Acceptor {
    fn start(sys: &PaxosCommit, id: NodeId, _: Vote) -> (Self, Actions<Self>) {
        (Acceptor::new(sys.shape, id.index()), vec![])
    }
    fn restart(sys: &PaxosCommit, id: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        (Acceptor::recover(sys.shape, id.index(), log), vec![])
    }
}

/// A Paxos Commit node: a leader, a participant (resource manager) or an acceptor.
pub type Node = core::Node<Leader, Rm, Acceptor>;

/// A Paxos Commit instance.
#[derive(Clone, Debug)]
pub struct PaxosCommit {
    pub shape: Shape,
}

impl PaxosCommit {
    /// `n` participants, 2`f`+1 acceptors, `leaders` leader nodes (leader `Ck` runs under
    /// lease epoch k+1: the model's stand-in for k+1 successive lease claims), each starting
    /// at most `max_rounds` ballots.
    pub fn new(n: u8, f: u8, leaders: u8, max_rounds: u32) -> Self {
        PaxosCommit {
            shape: Shape {
                n,
                f,
                leaders,
                max_rounds,
                leader_begins: false,
            },
        }
    }

    /// The same, but the default leader `C0` begins (gets [`crate::Input::Begin`]) and sends
    /// `Prepare` to every participant: what Tandem runs over HTTP.
    pub fn leader_begins(n: u8, f: u8, leaders: u8, max_rounds: u32) -> Self {
        let mut sys = PaxosCommit::new(n, f, leaders, max_rounds);
        sys.shape.leader_begins = true;
        sys
    }
}

core::vocabulary!(PaxosCommit);

impl System for PaxosCommit {
    type Node = Node;

    fn nodes(&self) -> Vec<NodeId> {
        let s = self.shape;
        s.leaders()
            .chain(s.participants())
            .chain(s.acceptors())
            .collect()
    }

    fn initiator(&self) -> NodeId {
        if self.shape.leader_begins {
            NodeId::Coordinator(0)
        } else {
            NodeId::Participant(0)
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
