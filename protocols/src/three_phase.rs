//! Three-phase commit (Skeen) with a termination protocol.
//!
//! Nodes: coordinator `C0`, participants `P0..P{n-1}` (`P0` initiates with `BeginCommit`,
//! which is also its YES vote).
//!
//! Failure-free path: BeginCommit → CanCommit → Vote(YES) → PreCommit → Ack → DoCommit.
//! Forced writes: a participant forces [`Record::Prepared`] before voting YES and
//! [`Record::Committed`] on commit; the coordinator forces [`Record::Commit`] before DoCommit.
//! A participant also writes (unforced) [`Record::PreCommitted`] when it becomes
//! pre-committed, so that a driver's restarted participant reports that state truthfully.
//!
//! Timeouts: every timer is [`Timer::Peer`]`(x)` — "I am waiting for `x`". 3PC is correct
//! only if such a timer fires when `x` has really failed (synchronous system, perfect failure
//! detector, crash-stop); the model checker enforces exactly that, and shows the split
//! decision when a partition breaks it.
//! - Coordinator waiting for votes: a silent participant ⇒ abort. Waiting for acks: a silent
//!   participant ⇒ treat as acknowledged (everyone voted YES) and commit.
//! - Participant that has not voted, waiting for CanCommit: abort unilaterally.
//! - Participant uncertain or pre-committed, waiting for its current leader: suspect it and
//!   move to the next leader in the fixed order `C0, P0, P1, ...` (the *term* is the position
//!   in that order). If that is itself it runs the termination protocol, otherwise it sends
//!   `Suspect` to the new leader and waits for it.
//!
//! Termination protocol (recovery coordinator of term `t`): ask every later participant for its
//! state (`StateReq`), then Skeen's rule: any aborted ⇒ abort; any committed ⇒ commit; any
//! pre-committed ⇒ move every uncertain participant to pre-committed, collect their acks, then
//! commit; all uncertain ⇒ abort. Decisions are sent to every participant. A participant that
//! has not voted aborts when asked for its state.
//!
//! Not covered: crash-recovery. [`Participant::recover`] keeps a prepared participant
//! uncertain and passive (it must never decide alone) and a coordinator without a commit record
//! passive; the model checks 3PC only under crash-stop.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::{self, Action, Actions, NodeId, Outcome, Role, Start, System, Vote};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PState {
    Working,
    Uncertain,
    PreCommitted,
    Committed,
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Msg {
    BeginCommit,
    CanCommit,
    Vote(Vote),
    PreCommit {
        term: u8,
    },
    Ack {
        term: u8,
    },
    DoCommit,
    Abort,
    StateReq {
        term: u8,
    },
    StateRep {
        term: u8,
        state: PState,
    },
    /// "I suspect everyone before you: you lead term `term`."
    Suspect {
        term: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Record {
    Prepared,
    /// The participant moved from uncertain to pre-committed (not forced).
    PreCommitted,
    /// Quorum 3PC only: the participant moved from uncertain to pre-aborted (not forced).
    PreAborted,
    Committed,
    Aborted,
    Commit,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Waiting for something from this peer.
    Peer(NodeId),
}

const COORD: NodeId = NodeId::Coordinator(0);

/// The leader of a term: `C0` for term 0, then `P0`, `P1`, ...
pub fn leader_of(term: u8) -> NodeId {
    if term == 0 {
        COORD
    } else {
        NodeId::Participant(term - 1)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lead {
    Collecting {
        waiting: BTreeSet<u8>,
        states: BTreeMap<u8, PState>,
    },
    PreCommitting {
        waiting: BTreeSet<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Participant {
    pub id: u8,
    pub n: u8,
    pub vote: Vote,
    pub state: PState,
    pub term: u8,
    pub lead: Option<Lead>,
}

impl Participant {
    pub fn new(id: u8, n: u8, vote: Vote) -> (Self, Actions<Self>) {
        let p = Participant {
            id,
            n,
            vote,
            state: PState::Working,
            term: 0,
            lead: None,
        };
        (p, vec![Action::SetTimer(Timer::Peer(COORD))])
    }

    pub fn recover(id: u8, n: u8, log: &[Record]) -> (Self, Actions<Self>) {
        let mut p = Participant {
            id,
            n,
            vote: Vote::No,
            state: PState::Aborted,
            term: 0,
            lead: None,
        };
        if log.contains(&Record::Committed) {
            p.state = PState::Committed;
            (p, vec![])
        } else if log.contains(&Record::Aborted) {
            (p, vec![])
        } else if log.contains(&Record::Prepared) {
            // Passive either way: 3PC's termination is correct only under crash-stop.
            p.state = if log.contains(&Record::PreCommitted) {
                PState::PreCommitted
            } else {
                PState::Uncertain
            };
            p.vote = Vote::Yes;
            (p, vec![])
        } else {
            (p, vec![Action::Decide(Outcome::Abort)])
        }
    }

    fn me(&self) -> NodeId {
        NodeId::Participant(self.id)
    }

    fn decided(&self) -> bool {
        matches!(self.state, PState::Committed | PState::Aborted)
    }

    fn cancel_all(&self) -> Actions<Self> {
        std::iter::once(COORD)
            .chain((0..self.n).map(NodeId::Participant))
            .map(|x| Action::CancelTimer(Timer::Peer(x)))
            .collect()
    }

    fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.n)
            .filter(move |q| *q != self.id)
            .map(NodeId::Participant)
    }

    fn decide(&mut self, o: Outcome) -> Actions<Self> {
        if self.decided() {
            return vec![];
        }
        self.lead = None;
        let mut out = match o {
            Outcome::Commit => {
                self.state = PState::Committed;
                vec![Action::ForceWrite(Record::Committed)]
            }
            Outcome::Abort => {
                self.state = PState::Aborted;
                vec![Action::Write(Record::Aborted)]
            }
        };
        out.extend(self.cancel_all());
        out.push(Action::Decide(o));
        out
    }

    fn broadcast(&self) -> Actions<Self> {
        let msg = if self.state == PState::Committed {
            Msg::DoCommit
        } else {
            Msg::Abort
        };
        self.others()
            .map(|q| Action::send(q, msg.clone()))
            .collect()
    }

    fn decide_and_broadcast(&mut self, o: Outcome) -> Actions<Self> {
        let mut out = self.decide(o);
        out.extend(self.broadcast());
        out
    }

    /// Become pre-committed (written once, on the move from uncertain).
    fn pre_commit(&mut self) -> Actions<Self> {
        if self.state == PState::PreCommitted {
            return vec![];
        }
        self.state = PState::PreCommitted;
        vec![Action::Write(Record::PreCommitted)]
    }

    fn vote_yes(&mut self, first: Msg) -> Actions<Self> {
        self.state = PState::Uncertain;
        vec![
            Action::ForceWrite(Record::Prepared),
            Action::send(COORD, first),
        ]
    }

    /// Become the recovery coordinator of `self.term`.
    fn terminate(&mut self) -> Actions<Self> {
        let mut out = vec![];
        if self.state == PState::Working {
            out.extend(self.decide(Outcome::Abort));
        }
        if self.decided() {
            out.extend(self.broadcast());
            return out;
        }
        let waiting: BTreeSet<u8> = (self.id + 1..self.n).collect();
        for q in &waiting {
            let to = NodeId::Participant(*q);
            out.push(Action::send(to, Msg::StateReq { term: self.term }));
            out.push(Action::SetTimer(Timer::Peer(to)));
        }
        let states = BTreeMap::from([(self.id, self.state)]);
        self.lead = Some(Lead::Collecting { waiting, states });
        out.extend(self.progress());
        out
    }

    /// Skeen's termination rule, once nobody is left to wait for.
    fn progress(&mut self) -> Actions<Self> {
        match &self.lead {
            Some(Lead::Collecting { waiting, states }) if waiting.is_empty() => {
                let has = |s: PState| states.values().any(|x| *x == s);
                if has(PState::Aborted) {
                    self.decide_and_broadcast(Outcome::Abort)
                } else if has(PState::Committed) {
                    self.decide_and_broadcast(Outcome::Commit)
                } else if has(PState::PreCommitted) {
                    let uncertain: BTreeSet<u8> = states
                        .iter()
                        .filter(|(q, s)| **s == PState::Uncertain && **q != self.id)
                        .map(|(q, _)| *q)
                        .collect();
                    let mut out = self.pre_commit();
                    for q in &uncertain {
                        let to = NodeId::Participant(*q);
                        out.push(Action::send(to, Msg::PreCommit { term: self.term }));
                        out.push(Action::SetTimer(Timer::Peer(to)));
                    }
                    self.lead = Some(Lead::PreCommitting { waiting: uncertain });
                    out.extend(self.progress());
                    out
                } else {
                    self.decide_and_broadcast(Outcome::Abort)
                }
            }
            Some(Lead::PreCommitting { waiting }) if waiting.is_empty() => {
                self.decide_and_broadcast(Outcome::Commit)
            }
            _ => vec![],
        }
    }

    /// Follow the leader of a (higher or equal) term.
    fn follow(&mut self, term: u8) -> Actions<Self> {
        let mut out = vec![];
        if term != self.term {
            out.push(Action::CancelTimer(Timer::Peer(leader_of(self.term))));
            self.term = term;
            self.lead = None;
        }
        if !self.decided() {
            out.push(Action::SetTimer(Timer::Peer(leader_of(term))));
        }
        out
    }

    /// As recovery coordinator, a reply from `from` for the current term: a state report
    /// (`Some`) while collecting states, an ack (`None`) while pre-committing.
    fn lead_reply(&mut self, from: NodeId, state: Option<PState>) -> Actions<Self> {
        let NodeId::Participant(q) = from else {
            return vec![];
        };
        let counted = match (&mut self.lead, state) {
            // Counted once: a state is recorded only for a participant still awaited.
            (Some(Lead::Collecting { waiting, states }), Some(state)) => {
                waiting.remove(&q) && states.insert(q, state).is_none()
            }
            (Some(Lead::PreCommitting { waiting }), None) => waiting.remove(&q),
            _ => false,
        };
        if !counted {
            return vec![];
        }
        std::iter::once(Action::CancelTimer(Timer::Peer(from)))
            .chain(self.progress())
            .collect()
    }
}

impl Role for Participant {
    type Protocol = ThreePc;

    fn on_begin(&mut self) -> Actions<Self> {
        match (self.state, self.vote) {
            (PState::Working, Vote::Yes) => self.vote_yes(Msg::BeginCommit),
            (PState::Working, Vote::No) => self.decide(Outcome::Abort),
            _ => vec![],
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        match msg {
            Msg::CanCommit if self.state == PState::Working => match self.vote {
                Vote::Yes => self.vote_yes(Msg::Vote(Vote::Yes)),
                Vote::No => {
                    let mut out = self.decide(Outcome::Abort);
                    out.push(Action::send(COORD, Msg::Vote(Vote::No)));
                    out
                }
            },
            Msg::PreCommit { term }
                if term >= self.term
                    && matches!(self.state, PState::Uncertain | PState::PreCommitted) =>
            {
                let mut out = self.follow(term);
                out.extend(self.pre_commit());
                out.push(Action::send(from, Msg::Ack { term }));
                out
            }
            Msg::DoCommit => self.decide(Outcome::Commit),
            Msg::Abort => self.decide(Outcome::Abort),
            Msg::StateReq { term } if self.decided() => {
                vec![Action::send(
                    from,
                    Msg::StateRep {
                        term,
                        state: self.state,
                    },
                )]
            }
            Msg::StateReq { term } if term >= self.term => {
                let mut out = self.follow(term);
                if self.state == PState::Working {
                    out.extend(self.decide(Outcome::Abort));
                }
                out.push(Action::send(
                    from,
                    Msg::StateRep {
                        term,
                        state: self.state,
                    },
                ));
                out
            }
            Msg::StateRep { term, state } if term == self.term => {
                self.lead_reply(from, Some(state))
            }
            Msg::Ack { term } if term == self.term => self.lead_reply(from, None),
            Msg::Suspect { term }
                if leader_of(term) == self.me() && term >= self.term && self.lead.is_none() =>
            {
                if self.decided() {
                    return self.broadcast();
                }
                let mut out = vec![Action::CancelTimer(Timer::Peer(leader_of(self.term)))];
                self.term = term;
                out.extend(self.terminate());
                out
            }
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, Timer::Peer(x): Timer) -> Actions<Self> {
        if let (Some(lead), NodeId::Participant(q)) = (&mut self.lead, x) {
            let waiting = match lead {
                Lead::Collecting { waiting, .. } | Lead::PreCommitting { waiting } => waiting,
            };
            if waiting.remove(&q) {
                return self.progress();
            }
        }
        if self.decided() || x != leader_of(self.term) {
            return vec![];
        }
        if self.state == PState::Working {
            // Never asked to vote and the coordinator is gone.
            return self.decide(Outcome::Abort);
        }
        self.term += 1;
        let next = leader_of(self.term);
        if next == self.me() {
            self.terminate()
        } else {
            vec![
                Action::send(next, Msg::Suspect { term: self.term }),
                Action::SetTimer(Timer::Peer(next)),
            ]
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CState {
    Fresh,
    Collecting {
        yes: BTreeSet<u8>,
    },
    PreCommitting {
        acked: BTreeSet<u8>,
    },
    Committed,
    Aborted,
    /// Restarted without a commit record: stays out of the way (3PC is crash-stop).
    Passive,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    pub n: u8,
    pub state: CState,
}

impl Coordinator {
    pub fn recover(n: u8, log: &[Record]) -> (Self, Actions<Self>) {
        if log.contains(&Record::Commit) {
            let c = Coordinator {
                n,
                state: CState::Committed,
            };
            let out = (0..n)
                .map(|p| Action::send(NodeId::Participant(p), Msg::DoCommit))
                .collect();
            (c, out)
        } else {
            (
                Coordinator {
                    n,
                    state: CState::Passive,
                },
                vec![],
            )
        }
    }

    fn all(&self) -> impl Iterator<Item = NodeId> {
        (0..self.n).map(NodeId::Participant)
    }

    fn abort(&mut self) -> Actions<Self> {
        self.state = CState::Aborted;
        let mut out: Actions<Self> = self
            .all()
            .map(|p| Action::CancelTimer(Timer::Peer(p)))
            .collect();
        out.push(Action::Decide(Outcome::Abort));
        out.extend(self.all().map(|p| Action::send(p, Msg::Abort)));
        out
    }

    fn check(&mut self) -> Actions<Self> {
        match &self.state {
            CState::Collecting { yes } if yes.len() == self.n as usize => {
                self.state = CState::PreCommitting {
                    acked: BTreeSet::new(),
                };
                let mut out = vec![];
                for p in self.all() {
                    out.push(Action::send(p, Msg::PreCommit { term: 0 }));
                    out.push(Action::SetTimer(Timer::Peer(p)));
                }
                out
            }
            CState::PreCommitting { acked } if acked.len() == self.n as usize => {
                self.state = CState::Committed;
                let mut out = vec![
                    Action::ForceWrite(Record::Commit),
                    Action::Decide(Outcome::Commit),
                ];
                out.extend(self.all().map(|p| Action::send(p, Msg::DoCommit)));
                out
            }
            _ => vec![],
        }
    }

    /// A participant answered: count it and move on if everyone has.
    fn heard(&mut self, p: u8) -> Actions<Self> {
        let mut out = vec![Action::CancelTimer(Timer::Peer(NodeId::Participant(p)))];
        out.extend(self.check());
        out
    }
}

impl Role for Coordinator {
    type Protocol = ThreePc;

    fn on_message(&mut self, from: NodeId, msg: Msg) -> Actions<Self> {
        let NodeId::Participant(p) = from else {
            return vec![];
        };
        match (&mut self.state, msg) {
            (CState::Fresh, Msg::BeginCommit) => {
                self.state = CState::Collecting {
                    yes: BTreeSet::from([p]),
                };
                let mut out = vec![Action::CancelTimer(Timer::Peer(from))];
                for q in self.all().filter(|q| *q != from) {
                    out.push(Action::send(q, Msg::CanCommit));
                    out.push(Action::SetTimer(Timer::Peer(q)));
                }
                out.extend(self.check());
                out
            }
            (CState::Collecting { yes }, Msg::Vote(Vote::Yes)) => {
                yes.insert(p);
                self.heard(p)
            }
            (CState::Collecting { .. }, Msg::Vote(Vote::No)) => self.abort(),
            (CState::PreCommitting { acked }, Msg::Ack { term: 0 }) => {
                acked.insert(p);
                self.heard(p)
            }
            _ => vec![],
        }
    }

    fn on_timeout(&mut self, Timer::Peer(x): Timer) -> Actions<Self> {
        let NodeId::Participant(p) = x else {
            return vec![];
        };
        match &mut self.state {
            CState::Fresh | CState::Collecting { .. } => self.abort(),
            CState::PreCommitting { acked } => {
                // Everyone voted YES: a silent participant does not stop the commit.
                acked.insert(p);
                self.check()
            }
            _ => vec![],
        }
    }
}

impl Start<ThreePc> for Coordinator {
    /// The coordinator waits for the initiator: if it dies before asking to commit, the
    /// transaction is aborted.
    fn start(sys: &ThreePc, _: NodeId, _: Vote) -> (Self, Actions<Self>) {
        let c = Coordinator {
            n: sys.n,
            state: CState::Fresh,
        };
        (
            c,
            vec![Action::SetTimer(Timer::Peer(NodeId::Participant(0)))],
        )
    }
    fn restart(sys: &ThreePc, _: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Coordinator::recover(sys.n, log)
    }
}

impl Start<ThreePc> for Participant {
    fn start(sys: &ThreePc, id: NodeId, vote: Vote) -> (Self, Actions<Self>) {
        Participant::new(id.index(), sys.n, vote)
    }
    fn restart(sys: &ThreePc, id: NodeId, log: &[Record]) -> (Self, Actions<Self>) {
        Participant::recover(id.index(), sys.n, log)
    }
}

/// A 3PC node: the coordinator or a participant.
pub type Node = core::Node<Coordinator, Participant>;

/// A 3PC instance with `n` participants.
#[derive(Clone, Debug)]
pub struct ThreePc {
    pub n: u8,
}

core::vocabulary!(ThreePc);

impl System for ThreePc {
    type Node = Node;

    fn nodes(&self) -> Vec<NodeId> {
        core::coordinator_and_participants(self.n)
    }

    fn is_yes_record(&self, record: &Record) -> bool {
        *record == Record::Prepared
    }

    fn timer_awaits(&self, timer: &Timer) -> Option<NodeId> {
        let Timer::Peer(x) = timer;
        Some(*x)
    }
}
