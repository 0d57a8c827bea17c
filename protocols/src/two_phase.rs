//! Two-phase commit with presumed abort.
//!
//! Nodes: one coordinator `C0` and participants `P0..P{n-1}`. Who starts is a choice
//! ([`Begin`]):
//! - [`Begin::Participant`]: `P0` initiates; its [`Msg::BeginCommit`] is both its YES vote and
//!   the request to commit (Gray & Lamport's topology, 3N−1 messages, 4 delays).
//! - [`Begin::Coordinator`]: the coordinator gets [`crate::Input::Begin`], forces
//!   [`Record::Begin`] (the transaction is logged before any Prepare) and sends
//!   [`Msg::Prepare`] to all N participants (the topology over HTTP: 3N messages, 3 delays).
//!   A coordinator that restarts with `Begin` but no decision in its log aborts and forces
//!   [`Record::Abort`] first, so the decision is durable before anyone hears it.
//!
//! A driver runs the [`Participant`] and the [`Coordinator`] directly (each is a
//! [`crate::Role`]); [`TwoPc`] puts them together for the model checker and the simulator.
//!
//! Forced writes: a participant forces [`Record::Prepared`] before voting YES and
//! [`Record::Committed`] before acknowledging COMMIT (the coordinator forgets after the acks,
//! so the participant must not need to ask again). The coordinator forces only
//! [`Record::Commit`]; aborts are never forced (a coordinator that knows nothing answers
//! "abort"), and [`Record::End`] is written lazily once every participant acknowledged.
//!
//! A prepared participant never decides alone: it asks the coordinator on a timer
//! ([`Msg::Query`]) until an answer arrives — which is exactly why 2PC blocks while the
//! coordinator is down.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::core::{self, Action, Actions, NodeId, Outcome, Role, Start, System, Vote};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Msg {
    /// Initiator → coordinator: "I am prepared (YES), please commit".
    BeginCommit,
    /// Coordinator → participant.
    Prepare,
    /// Participant → coordinator.
    Vote(Vote),
    /// Coordinator → participant: the decision (also the answer to a query).
    Outcome(Outcome),
    /// Participant → coordinator, after COMMIT is durable.
    Ack,
    /// In-doubt participant → coordinator: "what was decided?"
    Query,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Record {
    /// Participant: voted YES (forced).
    Prepared,
    /// Participant: learned COMMIT (forced before the ack).
    Committed,
    /// Participant: learned ABORT (lazy).
    Aborted,
    /// Coordinator: the commit decision (forced; the commit point).
    Commit,
    /// Coordinator (coordinator-initiated begin): the transaction exists (forced before any
    /// Prepare). Recovered without a decision, it means "abort".
    Begin,
    /// Coordinator: the abort decision, forced only by a coordinator that restarts after
    /// `Begin` and aborts (a live coordinator's abort is never logged: presumed abort).
    Abort,
    /// Coordinator: every participant acknowledged (lazy); the transaction is forgotten.
    End,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Coordinator: stop waiting for votes and abort.
    Votes,
    /// Coordinator: resend COMMIT to participants that have not acknowledged.
    Resend,
    /// Participant (not yet voted): give up and abort unilaterally.
    VoteDeadline,
    /// Participant (prepared): ask the coordinator again.
    InDoubt,
}

/// Coordinator state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoordState {
    /// Created for a transaction id it allocated; waiting for `Begin` (coordinator-initiated)
    /// or `BeginCommit` (participant-initiated).
    Fresh,
    Collecting {
        yes: BTreeSet<u8>,
    },
    Committing {
        acked: BTreeSet<u8>,
    },
    Aborted,
    /// Recovered without a commit record, or forgotten after every ack: presumed abort.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    pub n: u8,
    pub state: CoordState,
}

/// Participant state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartState {
    Working,
    Prepared,
    Committed,
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Participant {
    pub id: u8,
    pub vote: Vote,
    pub state: PartState,
}

const COORD: NodeId = NodeId::Coordinator(0);

fn all(n: u8) -> impl Iterator<Item = u8> {
    0..n
}

impl Coordinator {
    pub fn new(n: u8) -> Self {
        Coordinator {
            n,
            state: CoordState::Fresh,
        }
    }

    /// Rebuild from the coordinator's stable log: `Commit` ⇒ commit again (re-send COMMIT
    /// until every participant acknowledged); `Begin` without a decision ⇒ force `Abort`, then
    /// tell every participant; an `Abort` record ⇒ tell them again; anything else (nothing,
    /// or `End`) ⇒ know nothing and answer queries with "abort" (presumed abort).
    pub fn recover(n: u8, log: &[Record]) -> (Self, Actions<Self>) {
        let has = |r: Record| log.contains(&r);
        let mut c = Coordinator {
            n,
            state: CoordState::Unknown,
        };
        if has(Record::End) {
            (c, vec![])
        } else if has(Record::Commit) {
            c.state = CoordState::Committing {
                acked: BTreeSet::new(),
            };
            let mut out = vec![Action::Decide(Outcome::Commit)];
            out.extend(c.resend_commit());
            (c, out)
        } else if has(Record::Abort) || has(Record::Begin) {
            let mut out = vec![];
            if !has(Record::Abort) {
                out.push(Action::ForceWrite(Record::Abort));
            }
            out.extend(c.abort());
            (c, out)
        } else {
            (c, vec![])
        }
    }

    fn resend_commit(&mut self) -> Actions<Self> {
        let CoordState::Committing { acked } = &self.state else {
            return vec![];
        };
        let mut out: Vec<_> = all(self.n)
            .filter(|p| !acked.contains(p))
            .map(|p| Action::send(NodeId::Participant(p), Msg::Outcome(Outcome::Commit)))
            .collect();
        out.push(Action::SetTimer(Timer::Resend));
        out
    }

    fn abort(&mut self) -> Actions<Self> {
        self.state = CoordState::Aborted;
        let mut out = vec![
            Action::CancelTimer(Timer::Votes),
            Action::Decide(Outcome::Abort),
        ];
        out.extend(
            all(self.n).map(|p| Action::send(NodeId::Participant(p), Msg::Outcome(Outcome::Abort))),
        );
        out
    }

    fn check_votes(&mut self) -> Actions<Self> {
        let CoordState::Collecting { yes } = &self.state else {
            return vec![];
        };
        if yes.len() < self.n as usize {
            return vec![];
        }
        self.state = CoordState::Committing {
            acked: BTreeSet::new(),
        };
        let mut out = vec![
            Action::ForceWrite(Record::Commit),
            Action::CancelTimer(Timer::Votes),
            Action::Decide(Outcome::Commit),
        ];
        out.extend(self.resend_commit());
        out
    }
}

impl Role for Coordinator {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;

    /// Coordinator-initiated begin: log the transaction, then ask all N participants.
    fn on_begin(&mut self) -> Actions<Self> {
        if self.state != CoordState::Fresh {
            return vec![];
        }
        self.state = CoordState::Collecting {
            yes: BTreeSet::new(),
        };
        let mut out = vec![Action::ForceWrite(Record::Begin)];
        out.extend(all(self.n).map(|p| Action::send(NodeId::Participant(p), Msg::Prepare)));
        out.push(Action::SetTimer(Timer::Votes));
        out
    }

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        let NodeId::Participant(p) = from else {
            return vec![];
        };
        let reply = |o: Outcome| vec![Action::send(from, Msg::Outcome(o))];
        match (&mut self.state, msg) {
            (CoordState::Fresh, Msg::BeginCommit) => {
                self.state = CoordState::Collecting {
                    yes: BTreeSet::from([p]),
                };
                let mut out: Vec<_> = all(self.n)
                    .filter(|&q| q != p)
                    .map(|q| Action::send(NodeId::Participant(q), Msg::Prepare))
                    .collect();
                out.push(Action::SetTimer(Timer::Votes));
                out.extend(self.check_votes());
                out
            }
            // Someone gave up waiting before the transaction even started: abort it.
            (CoordState::Fresh, Msg::Query) => self.abort(),
            (CoordState::Collecting { yes }, Msg::BeginCommit | Msg::Vote(Vote::Yes)) => {
                yes.insert(p);
                self.check_votes()
            }
            (CoordState::Collecting { .. }, Msg::Vote(Vote::No)) => self.abort(),
            (
                CoordState::Committing { .. },
                Msg::BeginCommit | Msg::Vote(Vote::Yes) | Msg::Query,
            ) => reply(Outcome::Commit),
            (CoordState::Committing { acked }, Msg::Ack) => {
                acked.insert(p);
                if acked.len() == self.n as usize {
                    self.state = CoordState::Unknown;
                    vec![
                        Action::CancelTimer(Timer::Resend),
                        Action::Write(Record::End),
                        Action::Forget,
                    ]
                } else {
                    vec![]
                }
            }
            // Presumed abort: no commit record means abort.
            (
                CoordState::Aborted | CoordState::Unknown,
                Msg::BeginCommit | Msg::Vote(Vote::Yes) | Msg::Query,
            ) => reply(Outcome::Abort),
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, t: Timer) -> Actions<Self> {
        match (&self.state, t) {
            (CoordState::Collecting { .. }, Timer::Votes) => self.abort(),
            (CoordState::Committing { .. }, Timer::Resend) => self.resend_commit(),
            _ => vec![],
        }
    }
}

impl Participant {
    /// A participant whose local work is done; `vote` says whether it can commit.
    pub fn new(id: u8, vote: Vote) -> (Self, Actions<Self>) {
        (
            Participant {
                id,
                vote,
                state: PartState::Working,
            },
            vec![Action::SetTimer(Timer::VoteDeadline)],
        )
    }

    /// Rebuild from the participant's stable log. Prepared without an outcome: in doubt,
    /// ask the coordinator. Nothing durable: the unprepared work is lost, so abort.
    pub fn recover(id: u8, log: &[Record]) -> (Self, Actions<Self>) {
        let mut p = Participant {
            id,
            vote: Vote::No,
            state: PartState::Aborted,
        };
        if log.contains(&Record::Committed) {
            p.state = PartState::Committed;
            (p, vec![])
        } else if log.contains(&Record::Aborted) {
            (p, vec![])
        } else if log.contains(&Record::Prepared) {
            p.state = PartState::Prepared;
            p.vote = Vote::Yes;
            (
                p,
                vec![
                    Action::send(COORD, Msg::Query),
                    Action::SetTimer(Timer::InDoubt),
                ],
            )
        } else {
            (p, vec![Action::Decide(Outcome::Abort)])
        }
    }

    fn prepare(&mut self, first: Msg) -> Actions<Self> {
        match self.vote {
            Vote::Yes => {
                self.state = PartState::Prepared;
                vec![
                    Action::ForceWrite(Record::Prepared),
                    Action::CancelTimer(Timer::VoteDeadline),
                    Action::send(COORD, first),
                    Action::SetTimer(Timer::InDoubt),
                ]
            }
            Vote::No => {
                self.state = PartState::Aborted;
                vec![
                    Action::CancelTimer(Timer::VoteDeadline),
                    Action::Decide(Outcome::Abort),
                    Action::send(COORD, Msg::Vote(Vote::No)),
                ]
            }
        }
    }

    fn on_outcome(&mut self, o: Outcome) -> Actions<Self> {
        match (self.state, o) {
            (PartState::Prepared, Outcome::Commit) => {
                self.state = PartState::Committed;
                vec![
                    Action::ForceWrite(Record::Committed),
                    Action::CancelTimer(Timer::InDoubt),
                    Action::Decide(Outcome::Commit),
                    Action::send(COORD, Msg::Ack),
                ]
            }
            (PartState::Committed, Outcome::Commit) => vec![Action::send(COORD, Msg::Ack)],
            (PartState::Working | PartState::Prepared, Outcome::Abort) => {
                self.state = PartState::Aborted;
                vec![
                    Action::Write(Record::Aborted),
                    Action::CancelTimer(Timer::VoteDeadline),
                    Action::CancelTimer(Timer::InDoubt),
                    Action::Decide(Outcome::Abort),
                ]
            }
            // A stale "abort" answer to an old query after the coordinator forgot a committed
            // transaction, or a duplicate: ignore.
            _ => vec![],
        }
    }
}

impl Role for Participant {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;

    fn on_begin(&mut self) -> Actions<Self> {
        if self.state == PartState::Working {
            self.prepare(Msg::BeginCommit)
        } else {
            vec![]
        }
    }

    fn on_message(&mut self, _from: NodeId, msg: Msg) -> Actions<Self> {
        match (self.state, msg) {
            (PartState::Working, Msg::Prepare) => self.prepare(Msg::Vote(Vote::Yes)),
            (PartState::Prepared, Msg::Prepare) => {
                vec![Action::send(COORD, Msg::Vote(Vote::Yes))]
            }
            (PartState::Aborted, Msg::Prepare) => {
                vec![Action::send(COORD, Msg::Vote(Vote::No))]
            }
            (_, Msg::Outcome(o)) => self.on_outcome(o),
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, t: Timer) -> Actions<Self> {
        match (self.state, t) {
            (PartState::Working, Timer::VoteDeadline) => {
                self.state = PartState::Aborted;
                vec![Action::Decide(Outcome::Abort)]
            }
            (PartState::Prepared, Timer::InDoubt) => {
                vec![
                    Action::send(COORD, Msg::Query),
                    Action::SetTimer(Timer::InDoubt),
                ]
            }
            _ => vec![],
        }
    }
}

impl Start<TwoPc> for Coordinator {
    fn start(sys: &TwoPc, _: NodeId, _: Vote) -> (Self, Actions<Self>) {
        (Coordinator::new(sys.n), vec![])
    }
    fn restart(sys: &TwoPc, _: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Coordinator::recover(sys.n, log)
    }
}

impl Start<TwoPc> for Participant {
    fn start(_: &TwoPc, id: NodeId, vote: Vote) -> (Self, Actions<Self>) {
        Participant::new(id.index(), vote)
    }
    fn restart(_: &TwoPc, id: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Participant::recover(id.index(), log)
    }
}

/// A 2PC node: the coordinator or a participant.
pub type Node = core::Node<Coordinator, Participant>;

/// Who starts a 2PC transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Begin {
    /// Participant `P0` (its `BeginCommit` is its YES vote): Gray & Lamport's topology.
    Participant,
    /// The coordinator: it logs the transaction and sends `Prepare` to all N participants.
    Coordinator,
}

/// A 2PC instance with `n` participants.
#[derive(Clone, Debug)]
pub struct TwoPc {
    pub n: u8,
    pub begin: Begin,
}

impl TwoPc {
    /// `P0` starts the protocol.
    pub fn new(n: u8) -> Self {
        TwoPc {
            n,
            begin: Begin::Participant,
        }
    }

    /// The coordinator starts the protocol (as over HTTP).
    pub fn coordinator_begins(n: u8) -> Self {
        TwoPc {
            n,
            begin: Begin::Coordinator,
        }
    }
}

impl System for TwoPc {
    type Node = Node;

    fn nodes(&self) -> Vec<NodeId> {
        core::coordinator_and_participants(self.n)
    }

    fn initiator(&self) -> NodeId {
        match self.begin {
            Begin::Participant => NodeId::Participant(0),
            Begin::Coordinator => COORD,
        }
    }

    fn is_yes_record(&self, record: &Record) -> bool {
        *record == Record::Prepared
    }
}
