//! Named crash points: abort the process at an exact place in the code, for crash tests.
//!
//! Code marks a place with [`point`]`("orchestrator.after_call_before_persist")`. The environment
//! variable `TANDEM_CRASH` switches points on, comma-separated:
//!
//! - `name=N`: abort on the N-th hit of `name` in this process (`name` alone means `name=1`);
//! - `name@P`: abort on each hit with probability `P` (0 < P ≤ 1).
//!
//! Aborting means: write `tandem crash point <name> hit <n>: aborting` to stderr, then
//! [`std::process::abort`] — no destructors, no graceful shutdown, no flushing of anything else,
//! as with `kill -9`. The variable is read and parsed once, on the first [`init`] or [`point`]
//! call; a malformed value or an unknown point name is refused ([`init`] returns the error; a
//! lazy parse in [`point`] aborts with the message), so a typo never silently disables a test.
//!
//! **Cost when off**: with `TANDEM_CRASH` unset (or empty), every [`point`] call after the first
//! is one relaxed atomic load and a branch. Every point name is listed in [`POINTS`] and
//! documented in `docs/crash-points.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// The environment variable that switches crash points on.
pub const ENV: &str = "TANDEM_CRASH";

/// Every crash point in Tandem (see `docs/crash-points.md`).
pub const POINTS: &[&str] = &[
    // orchestrator driver
    "orchestrator.after_claim",
    "orchestrator.before_call",
    "orchestrator.before_compensation_call",
    "orchestrator.after_call_before_persist",
    "orchestrator.after_persist",
    // orchestrator 2PC coordinator (orchestrator/src/commit/drive.rs)
    "orchestrator.2pc.after_votes",
    "orchestrator.2pc.after_decision",
    "orchestrator.2pc.mid_broadcast",
    // orchestrator Paxos Commit leader (orchestrator/src/commit/paxos.rs)
    "orchestrator.paxos.after_votes",
    // orchestrator retention (orchestrator/src/retention.rs)
    "orchestrator.retention.after_forget",
    // orchestrator 3PC coordinator (orchestrator/src/commit/three_phase.rs)
    "orchestrator.3pc.after_precommit",
    // Paxos Commit acceptor (services/acceptor)
    "acceptor.after_force",
    // services (the kit's barrier, so every service has them)
    "service.action.before_commit",
    "service.action.after_commit",
    "service.compensation.before_commit",
    "service.compensation.after_commit",
    // the key-value store's 2PC coordinator
    "kv.coordinator.after_commit_record",
    // the 2PC participant (the kit's, so every service has them)
    "service.2pc.after_prepare",
    "service.2pc.after_commit_prepared",
];

const UNINIT: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    /// Abort on this hit (1-based).
    Nth(u64),
    /// Abort on each hit with this probability.
    Probability(f64),
}

#[derive(Debug)]
struct Armed {
    name: &'static str,
    trigger: Trigger,
    hits: AtomicU64,
}

/// Parse a `TANDEM_CRASH` value into (point, trigger) pairs.
fn parse(spec: &str) -> Result<Vec<(&'static str, Trigger)>, String> {
    let mut out = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, trigger) = if let Some((n, p)) = entry.split_once('@') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{ENV}: {entry:?}: the probability is not a number"))?;
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!(
                    "{ENV}: {entry:?}: the probability must be in (0, 1]"
                ));
            }
            (n, Trigger::Probability(p))
        } else if let Some((n, count)) = entry.split_once('=') {
            let count: u64 = count
                .trim()
                .parse()
                .ok()
                .filter(|c| *c >= 1)
                .ok_or_else(|| format!("{ENV}: {entry:?}: the count must be an integer ≥ 1"))?;
            (n, Trigger::Nth(count))
        } else {
            (entry, Trigger::Nth(1))
        };
        let name = name.trim();
        let known = POINTS.iter().find(|p| **p == name).ok_or_else(|| {
            format!(
                "{ENV}: unknown crash point {name:?} (known: {})",
                POINTS.join(", ")
            )
        })?;
        out.push((*known, trigger));
    }
    Ok(out)
}

/// Read and parse `TANDEM_CRASH` (once). Binaries call this at start-up so that a malformed
/// value stops them at once ([`crate::Error::CrashPoints`]); returns the points switched on.
pub fn init() -> Result<Vec<String>, crate::Error> {
    let spec = std::env::var(ENV).unwrap_or_default();
    let parsed = parse(&spec).map_err(crate::Error::CrashPoints)?;
    let armed = ARMED.get_or_init(|| {
        parsed
            .iter()
            .map(|(name, trigger)| Armed {
                name,
                trigger: *trigger,
                hits: AtomicU64::new(0),
            })
            .collect()
    });
    STATE.store(if armed.is_empty() { OFF } else { ON }, Ordering::Relaxed);
    Ok(armed.iter().map(|a| a.name.to_string()).collect())
}

/// A crash point: aborts the process here if `TANDEM_CRASH` says so (see the module docs).
#[inline]
pub fn point(name: &'static str) {
    match STATE.load(Ordering::Relaxed) {
        OFF => {}
        _ => slow(name),
    }
}

#[cold]
fn slow(name: &'static str) {
    if STATE.load(Ordering::Relaxed) == UNINIT
        && let Err(e) = init()
    {
        eprintln!("{e}");
        std::process::abort();
    }
    debug_assert!(
        POINTS.contains(&name),
        "crash point {name} is not in POINTS"
    );
    let Some(armed) = ARMED.get() else { return };
    for a in armed.iter().filter(|a| a.name == name) {
        let hit = a.hits.fetch_add(1, Ordering::Relaxed) + 1;
        let fire = match a.trigger {
            Trigger::Nth(n) => hit == n,
            Trigger::Probability(p) => rand::random::<f64>() < p,
        };
        if fire {
            eprintln!("tandem crash point {name} hit {hit}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_probabilities_and_lists() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(
            parse("orchestrator.after_persist=3, service.action.before_commit@0.05,orchestrator.after_claim")
                .unwrap(),
            vec![
                ("orchestrator.after_persist", Trigger::Nth(3)),
                ("service.action.before_commit", Trigger::Probability(0.05)),
                ("orchestrator.after_claim", Trigger::Nth(1)),
            ]
        );
    }

    #[test]
    fn refuses_malformed_specs_and_unknown_points() {
        for bad in [
            "nope",
            "orchestrator.after_persist=0",
            "orchestrator.after_persist=x",
            "orchestrator.after_persist@0",
            "orchestrator.after_persist@1.5",
            "orchestrator.after_persist@",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn every_point_is_documented() {
        let doc = include_str!("../../../docs/crash-points.md");
        for p in POINTS {
            assert!(
                doc.contains(&format!("`{p}`")),
                "{p} is not in docs/crash-points.md"
            );
        }
    }
}
