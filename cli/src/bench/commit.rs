//! What an atomic commit costs, from the running system: lock-hold time per participant (read
//! from the transaction the coordinator answers), messages and forced writes per transaction
//! (from the processes' counters, `GET /stats`), next to the formulas of the
//! coordinator-initiated 2PC (docs/commit-protocols.md).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::measure::{Latency, Timings};
use super::stats::DbTransactions;

/// The name a participant's lock-hold time is reported under.
pub fn lock_hold_name(service: &str) -> String {
    format!("lock hold {service}")
}

/// How long each participant of a settled transaction (the view `GET /transactions/{id}`
/// answers) held its locks, as the coordinator saw it: from its YES vote's arrival
/// (`prepared_at`) to its ack's (`finished_at`), to the microsecond. Participants that never
/// prepared or never acknowledged are left out.
pub fn lock_holds(view: &Value) -> Timings {
    let at = |p: &Value, field: &str| {
        p.get(field)?
            .as_str()
            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
    };
    view["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let held = (at(p, "finished_at")? - at(p, "prepared_at")?)
                .to_std()
                .unwrap_or(Duration::ZERO);
            Some((lock_hold_name(p["service"].as_str()?), held))
        })
        .collect()
}

/// The failure-free costs of 2PC when the coordinator begins (Tandem over HTTP), for N
/// participants (docs/commit-protocols.md, "Costs" and "What one message is over HTTP").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Formulas {
    pub participants: usize,
    /// Prepare + vote + Commit: 3N, until the last participant knows the outcome.
    pub messages: usize,
    /// With the acks (the responses to `/2pc/commit`): 4N.
    pub messages_with_acks: usize,
    /// `Begin` + N `Prepared` + `Commit` + N `Committed`: 2N+2.
    pub forced_writes: usize,
}

impl Formulas {
    pub fn new(n: usize) -> Self {
        Formulas {
            participants: n,
            messages: 3 * n,
            messages_with_acks: 4 * n,
            forced_writes: 2 * n + 2,
        }
    }
}

/// The kinds of the protocol's messages (requests and their responses) the processes count.
pub const PROTOCOL_MESSAGES: [&str; 8] = [
    "prepare",
    "vote",
    "commit",
    "ack",
    "abort",
    "abort_ack",
    "query",
    "decision",
];

/// Forced writes per transaction by kind, counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ForcedWrites {
    pub total: f64,
    /// Ordinary `COMMIT`s of the coordinator (the formula has 2: `Begin`, `Commit`).
    pub coordinator_commits: f64,
    /// Ordinary `COMMIT`s of the participants (the formula has none).
    pub participant_commits: f64,
    /// `PREPARE TRANSACTION` (the formula: N).
    pub prepares: f64,
    /// `COMMIT PREPARED` (the formula: N).
    pub commit_prepared: f64,
}

/// What one transaction cost, counted in the running system, beside the formulas.
#[derive(Debug, Clone, Serialize)]
pub struct CommitCosts {
    pub formulas: Formulas,
    /// Protocol messages per transaction, counted by the coordinator (sent + received).
    pub messages_at_coordinator: f64,
    /// The same messages counted by the participants (sent + received, all of them).
    pub messages_at_participants: f64,
    /// Capability checks (`GET /2pc/status` and its answer) per transaction: not protocol
    /// messages, at most one pair per service every 10 s.
    pub status_messages: f64,
    pub forced_writes: ForcedWrites,
    /// Lock-hold time per participant (see [`lock_holds`]).
    pub lock_hold: BTreeMap<String, Latency>,
}

fn protocol_messages(t: &DbTransactions) -> f64 {
    PROTOCOL_MESSAGES
        .iter()
        .filter_map(|k| t.messages.get(*k))
        .map(|m| m.sent + m.received)
        .sum()
}

/// The costs of one level from its per-component figures (`coordinator`: the component that
/// coordinates; every other component is a participant) and what the operations reported.
pub fn costs(
    n: usize,
    per_component: &BTreeMap<String, DbTransactions>,
    coordinator: &str,
    reported: &BTreeMap<String, Latency>,
) -> CommitCosts {
    let mut f = ForcedWrites::default();
    let (mut at_coordinator, mut at_participants, mut status) = (0.0, 0.0, 0.0);
    for (c, t) in per_component {
        // Ordinary COMMITs: writes less the statement transactions of COMMIT / ROLLBACK
        // PREPARED, which the counters include in the writes.
        let commits = t.writes_per_saga - t.commit_prepared_per_saga - t.rollback_prepared_per_saga;
        if c == coordinator {
            f.coordinator_commits += commits;
            at_coordinator += protocol_messages(t);
            status += t
                .messages
                .get("status")
                .map_or(0.0, |m| m.sent + m.received);
        } else {
            f.participant_commits += commits;
            at_participants += protocol_messages(t);
        }
        f.prepares += t.prepared_per_saga;
        f.commit_prepared += t.commit_prepared_per_saga;
    }
    f.total = f.coordinator_commits + f.participant_commits + f.prepares + f.commit_prepared;
    CommitCosts {
        formulas: Formulas::new(n),
        messages_at_coordinator: at_coordinator,
        messages_at_participants: at_participants,
        status_messages: status,
        forced_writes: f,
        lock_hold: reported
            .iter()
            .filter(|(k, _)| k.starts_with("lock hold "))
            .map(|(k, v)| (k.trim_start_matches("lock hold ").to_string(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bench::stats::MessageRate;

    #[test]
    fn lock_holds_come_from_the_vote_and_ack_times() {
        let view = json!({ "participants": [
            { "service": "inventory", "prepared_at": "2026-11-30T10:00:00.001500Z",
              "finished_at": "2026-11-30T10:00:00.013250Z" },
            { "service": "payment", "prepared_at": "2026-11-30T10:00:00Z",
              "finished_at": null },
            { "service": "shipping", "prepared_at": null, "finished_at": null },
        ]});
        assert_eq!(
            lock_holds(&view),
            vec![(
                "lock hold inventory".to_string(),
                Duration::from_micros(11_750)
            )]
        );
        assert!(lock_holds(&json!({})).is_empty());
    }

    #[test]
    fn formulas_of_coordinator_initiated_2pc() {
        let f = Formulas::new(3);
        assert_eq!(
            (f.messages, f.messages_with_acks, f.forced_writes),
            (9, 12, 8)
        );
        assert_eq!(Formulas::new(5).forced_writes, 12);
    }

    fn component(
        writes: f64,
        prepared: f64,
        commit_prepared: f64,
        messages: &[(&str, f64, f64)],
    ) -> DbTransactions {
        DbTransactions {
            database: String::new(),
            process_cpu_ms_per_saga: None,
            postgres_cpu_ms_per_saga: 0.0,
            writes_per_saga: writes,
            reads_per_saga: 0.0,
            pg_xact_commit_per_saga: None,
            prepared_per_saga: prepared,
            commit_prepared_per_saga: commit_prepared,
            rollback_prepared_per_saga: 0.0,
            forced_writes_per_saga: writes + prepared,
            messages: messages
                .iter()
                .map(|(k, sent, received)| {
                    let rate = MessageRate {
                        sent: *sent,
                        received: *received,
                    };
                    (k.to_string(), rate)
                })
                .collect(),
        }
    }

    /// A failure-free round's messages (`n` of each kind) as one side counts them: the
    /// coordinator sends the requests and receives the responses, a participant the reverse.
    fn round(n: f64, coordinator: bool) -> Vec<(&'static str, f64, f64)> {
        let (request, response) = if coordinator {
            ((n, 0.0), (0.0, n))
        } else {
            ((0.0, n), (n, 0.0))
        };
        [
            ("prepare", request),
            ("vote", response),
            ("commit", request),
            ("ack", response),
        ]
        .into_iter()
        .map(|(kind, (sent, received))| (kind, sent, received))
        .collect()
    }

    #[test]
    fn costs_add_up_the_components_by_kind() {
        let mut per = BTreeMap::new();
        // The coordinator: 6 COMMITs, sent 3 Prepares and 3 COMMITs, received 3 votes and 3
        // acks, and a capability check now and then.
        let mut m = round(3.0, true);
        m.extend([("status", 0.03, 0.0), ("status_reply", 0.0, 0.03)]);
        per.insert("orchestrator".to_string(), component(6.0, 0.0, 0.0, &m));
        for s in ["inventory", "payment"] {
            // 1 COMMIT (the branch row) + 1 COMMIT PREPARED counted as writes.
            let mut m = round(1.0, false);
            m.push(("status", 0.0, 0.01));
            per.insert(s.to_string(), component(2.0, 1.0, 1.0, &m));
        }
        let reported = BTreeMap::from([(
            lock_hold_name("payment"),
            Latency {
                p50_ms: 5.0,
                p95_ms: 6.0,
                p99_ms: 7.0,
                max_ms: 8.0,
            },
        )]);
        let c = costs(2, &per, "orchestrator", &reported);
        assert_eq!(c.messages_at_coordinator, 12.0);
        assert_eq!(c.messages_at_participants, 8.0);
        assert!((c.status_messages - 0.03).abs() < 1e-9);
        assert_eq!(
            c.forced_writes,
            ForcedWrites {
                total: 12.0,
                coordinator_commits: 6.0,
                participant_commits: 2.0,
                prepares: 2.0,
                commit_prepared: 2.0,
            }
        );
        assert_eq!(c.formulas.forced_writes, 6);
        assert_eq!(c.lock_hold["payment"].p99_ms, 7.0);
    }
}
