//! A deterministic in-memory network that runs the failure-free path of any [`System`] and
//! measures it, and [`compare`], which backs `tandem commit compare`.
//!
//! Topology (Gray & Lamport's counting): every node on its own host unless a host map says
//! otherwise; the initiator ([`System::initiator`]: participant `P0`, or the 2PC coordinator
//! when it begins) receives [`Input::Begin`] at time 0 and its first message counts. A message between hosts takes one unit of time (one *message delay*); a
//! message to a node on the same host arrives at once and is not counted. Messages one step
//! sends to the same host travel as one network message (Paxos Commit's bundled phase 2b is
//! already one message by construction).
//!
//! Measured, never assumed:
//! - `delays`: the time at which the last participant learns the outcome (critical path);
//! - `messages`: network messages delivered by then (what the outcome costs; later
//!   acknowledgements that only let a coordinator forget are in `messages_total`);
//! - `forced_writes`: [`Action::ForceWrite`]s executed by all nodes in the whole run.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::core::{Action, Input, NodeId, Outcome, Role, System, Vote};
use crate::paxos_commit::PaxosCommit;
use crate::three_phase::ThreePc;
use crate::two_phase::TwoPc;

/// What one failure-free run measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Measurement {
    pub messages: usize,
    pub messages_total: usize,
    pub delays: u32,
    pub forced_writes: usize,
    pub outcome: Option<Outcome>,
    /// Every participant decided the same outcome.
    pub all_decided: bool,
}

/// Run `sys` failure-free with every participant voting YES. `host` maps nodes to hosts.
pub fn run<S: System>(sys: &S, host: impl Fn(NodeId) -> u32) -> Measurement {
    type Ev<M> = Option<(NodeId, M)>; // None = Begin
    type Queue<M> = BTreeMap<(u32, u64), (NodeId, Ev<M>)>;
    let mut nodes: BTreeMap<NodeId, S::Node> = BTreeMap::new();
    for id in sys.nodes() {
        let (node, _boot) = sys.boot(id, Vote::Yes); // boot actions only arm timers
        nodes.insert(id, node);
    }
    let mut queue: Queue<<S::Node as Role>::Msg> = BTreeMap::new();
    let mut seq = 0u64;
    queue.insert((0, seq), (sys.initiator(), None));
    let mut arrivals: Vec<u32> = vec![];
    let mut forced = 0;
    let mut decided: BTreeMap<NodeId, (Outcome, u32)> = BTreeMap::new();
    let participants: BTreeSet<NodeId> = sys.participants().into_iter().collect();

    while let Some(((t, _), (to, ev))) = queue.pop_first() {
        let node = nodes.get_mut(&to).expect("unknown node");
        let input = match ev {
            None => Input::Begin,
            Some((from, msg)) => Input::Receive { from, msg },
        };
        let mut batches: BTreeMap<u32, Vec<(NodeId, _)>> = BTreeMap::new();
        for a in node.handle(input) {
            match a {
                Action::ForceWrite(_) => forced += 1,
                Action::Send { to: dest, msg } => {
                    batches.entry(host(dest)).or_default().push((dest, msg))
                }
                Action::Decide(o) => {
                    if participants.contains(&to) {
                        decided.entry(to).or_insert((o, t));
                    }
                }
                Action::Write(_)
                | Action::SetTimer(_)
                | Action::CancelTimer(_)
                | Action::Forget => {}
            }
        }
        for (h, msgs) in batches {
            let arrival = if h == host(to) { t } else { t + 1 };
            if h != host(to) {
                arrivals.push(arrival);
            }
            for (dest, msg) in msgs {
                seq += 1;
                queue.insert((arrival, seq), (dest, Some((to, msg))));
            }
        }
    }
    let delays = decided.values().map(|(_, t)| *t).max().unwrap_or(0);
    let outcomes: BTreeSet<Outcome> = decided.values().map(|(o, _)| *o).collect();
    Measurement {
        messages: arrivals.iter().filter(|a| **a <= delays).count(),
        messages_total: arrivals.len(),
        delays,
        forced_writes: forced,
        outcome: outcomes.first().copied().filter(|_| outcomes.len() == 1),
        all_decided: decided.len() == participants.len() && outcomes.len() == 1,
    }
}

/// The closed-form expectation for one row, with its formula spelled out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub messages: usize,
    pub messages_formula: &'static str,
    pub delays: u32,
    pub forced_writes: usize,
    pub forced_writes_formula: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub protocol: String,
    pub topology: &'static str,
    pub measured: Measurement,
    pub expected: Expected,
}

impl Row {
    pub fn matches(&self) -> bool {
        let m = &self.measured;
        let e = &self.expected;
        m.all_decided
            && m.outcome == Some(Outcome::Commit)
            && m.messages == e.messages
            && m.delays == e.delays
            && m.forced_writes == e.forced_writes
    }
}

/// Each node on its own host.
pub fn separate_hosts(id: NodeId) -> u32 {
    match id {
        NodeId::Coordinator(i) => i as u32,
        NodeId::Participant(i) => 1000 + i as u32,
        NodeId::Acceptor(i) => 2000 + i as u32,
    }
}

/// Paxos Commit with F = 0 and its single acceptor on the leader's host.
pub fn acceptor_beside_leader(id: NodeId) -> u32 {
    match id {
        NodeId::Acceptor(0) => 0,
        other => separate_hosts(other),
    }
}

impl Row {
    fn new(protocol: impl Into<String>, topology: &'static str, measured: Measurement) -> Self {
        Row {
            protocol: protocol.into(),
            topology,
            measured,
            expected: Expected {
                messages: 0,
                messages_formula: "",
                delays: 0,
                forced_writes: 0,
                forced_writes_formula: "",
            },
        }
    }

    /// The formulas this row's measurement is checked against.
    fn expect(
        mut self,
        (messages, messages_formula): (usize, &'static str),
        delays: u32,
        (forced_writes, forced_writes_formula): (usize, &'static str),
    ) -> Self {
        self.expected = Expected {
            messages,
            messages_formula,
            delays,
            forced_writes,
            forced_writes_formula,
        };
        self
    }
}

const OWN_HOSTS: &str = "coordinator and each participant on its own host";

/// Run all three protocols for `n` participants (Paxos Commit tolerating `f` failures) and
/// pair each measurement with its formula.
pub fn compare(n: u8, f: u8) -> Vec<Row> {
    let nn = n as usize;
    let ff = f as usize;
    let mut rows = vec![
        Row::new(
            "2PC (presumed abort)",
            OWN_HOSTS,
            run(&TwoPc::new(n), separate_hosts),
        )
        .expect((3 * nn - 1, "3N-1"), 4, (2 * nn + 1, "2N+1")),
        Row::new(
            "2PC (presumed abort, coordinator begins)",
            OWN_HOSTS,
            run(&TwoPc::coordinator_begins(n), separate_hosts),
        )
        .expect((3 * nn, "3N"), 3, (2 * nn + 2, "2N+2")),
        Row::new("3PC", OWN_HOSTS, run(&ThreePc { n }, separate_hosts)).expect(
            (5 * nn - 1, "5N-1"),
            6,
            (2 * nn + 1, "2N+1"),
        ),
        Row::new(
            format!("Paxos Commit (F={f})"),
            "leader, each participant, each of the 2F+1 acceptors on its own host",
            run(&PaxosCommit::new(n, f, 1, u8::MAX), separate_hosts),
        )
        .expect(
            ((nn + 1) * (2 * ff + 3) - 2, "(N+1)(2F+3)-2"),
            5,
            (nn + 2 * ff + 1, "N+2F+1"),
        ),
    ];
    if f == 0 {
        rows.push(
            Row::new(
                "Paxos Commit (F=0, acceptor beside leader)",
                "the single acceptor on the leader's host",
                run(&PaxosCommit::new(n, 0, 1, u8::MAX), acceptor_beside_leader),
            )
            .expect((3 * nn - 1, "3N-1 (= 2PC)"), 4, (nn + 1, "N+1")),
        );
    }
    rows
}
