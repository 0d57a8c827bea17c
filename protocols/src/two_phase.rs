//! Two-phase commit with presumed abort.
//!
//! Nodes: one coordinator `C0` and participants `P0..P{n-1}`; `P0` initiates: its
//! [`Msg::BeginCommit`] is both its YES vote and the request to commit (Gray & Lamport's
//! counting, 3N−1 messages).
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

use crate::core::{Action, Actions, Input, NodeId, Outcome, Role, System, Vote};

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
    /// Created for a transaction id it allocated; waiting for BeginCommit.
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

    /// Rebuild from the coordinator's stable log.
    pub fn recover(n: u8, log: &[Record]) -> (Self, Vec<Action<Msg, Record, Timer>>) {
        if log.contains(&Record::End) || !log.contains(&Record::Commit) {
            return (
                Coordinator {
                    n,
                    state: CoordState::Unknown,
                },
                vec![],
            );
        }
        let mut c = Coordinator {
            n,
            state: CoordState::Committing {
                acked: BTreeSet::new(),
            },
        };
        let mut out = vec![Action::Decide(Outcome::Commit)];
        out.extend(c.resend_commit());
        (c, out)
    }

    fn resend_commit(&mut self) -> Vec<Action<Msg, Record, Timer>> {
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

    fn abort(&mut self) -> Vec<Action<Msg, Record, Timer>> {
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

    fn check_votes(&mut self) -> Vec<Action<Msg, Record, Timer>> {
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

    fn on_msg(&mut self, from: NodeId, msg: Msg) -> Vec<Action<Msg, Record, Timer>> {
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

    fn on_timer(&mut self, t: Timer) -> Vec<Action<Msg, Record, Timer>> {
        match (&self.state, t) {
            (CoordState::Collecting { .. }, Timer::Votes) => self.abort(),
            (CoordState::Committing { .. }, Timer::Resend) => self.resend_commit(),
            _ => vec![],
        }
    }
}

impl Participant {
    /// A participant whose local work is done; `vote` says whether it can commit.
    pub fn new(id: u8, vote: Vote) -> (Self, Vec<Action<Msg, Record, Timer>>) {
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
    pub fn recover(id: u8, log: &[Record]) -> (Self, Vec<Action<Msg, Record, Timer>>) {
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

    fn prepare(&mut self, first: Msg) -> Vec<Action<Msg, Record, Timer>> {
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

    fn on_outcome(&mut self, o: Outcome) -> Vec<Action<Msg, Record, Timer>> {
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

/// A 2PC node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Coordinator(Coordinator),
    Participant(Participant),
}

impl Role for Node {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;

    fn handle(&mut self, input: Input<Msg, Timer>) -> Actions<Self> {
        match (self, input) {
            (Node::Participant(p), Input::Begin) if p.state == PartState::Working => {
                p.prepare(Msg::BeginCommit)
            }
            (Node::Participant(p), Input::Receive { msg, .. }) => match (p.state, msg) {
                (PartState::Working, Msg::Prepare) => p.prepare(Msg::Vote(Vote::Yes)),
                (PartState::Prepared, Msg::Prepare) => {
                    vec![Action::send(COORD, Msg::Vote(Vote::Yes))]
                }
                (PartState::Aborted, Msg::Prepare) => {
                    vec![Action::send(COORD, Msg::Vote(Vote::No))]
                }
                (_, Msg::Outcome(o)) => p.on_outcome(o),
                _ => vec![],
            },
            (Node::Participant(p), Input::Timeout(t)) => match (p.state, t) {
                (PartState::Working, Timer::VoteDeadline) => {
                    p.state = PartState::Aborted;
                    vec![Action::Decide(Outcome::Abort)]
                }
                (PartState::Prepared, Timer::InDoubt) => {
                    vec![
                        Action::send(COORD, Msg::Query),
                        Action::SetTimer(Timer::InDoubt),
                    ]
                }
                _ => vec![],
            },
            (Node::Coordinator(c), Input::Receive { from, msg }) => c.on_msg(from, msg),
            (Node::Coordinator(c), Input::Timeout(t)) => c.on_timer(t),
            _ => vec![],
        }
    }
}

/// A 2PC instance with `n` participants.
#[derive(Clone, Debug)]
pub struct TwoPc {
    pub n: u8,
}

impl System for TwoPc {
    type Node = Node;

    fn nodes(&self) -> Vec<NodeId> {
        let mut v = vec![COORD];
        v.extend(self.participants());
        v
    }

    fn participants(&self) -> Vec<NodeId> {
        all(self.n).map(NodeId::Participant).collect()
    }

    fn boot(&self, id: NodeId, vote: Vote) -> (Node, Actions<Node>) {
        match id {
            NodeId::Participant(i) => {
                let (p, out) = Participant::new(i, vote);
                (Node::Participant(p), out)
            }
            _ => (Node::Coordinator(Coordinator::new(self.n)), vec![]),
        }
    }

    fn recover(&self, id: NodeId, log: &[Record]) -> (Node, Actions<Node>) {
        match id {
            NodeId::Participant(i) => {
                let (p, out) = Participant::recover(i, log);
                (Node::Participant(p), out)
            }
            _ => {
                let (c, out) = Coordinator::recover(self.n, log);
                (Node::Coordinator(c), out)
            }
        }
    }

    fn is_yes_record(&self, record: &Record) -> bool {
        *record == Record::Prepared
    }
}
