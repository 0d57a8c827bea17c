//! Hand-made histories, one per anomaly, and the valid ones that must pass.

use super::*;
use crate::history::{Mop, Op, OpResult};

fn a(key: &str, value: u64) -> Mop {
    Mop::Append {
        key: key.into(),
        value,
    }
}

fn r(key: &str, list: &[u64]) -> Mop {
    Mop::Read {
        key: key.into(),
        value: Some(list.to_vec()),
    }
}

/// Ops run one after another (T_i from 10 i to 10 i + 5) unless `overlap`: all at once.
fn history(ops: Vec<(OpResult, Vec<Mop>)>, overlap: bool) -> Vec<Op> {
    ops.into_iter()
        .enumerate()
        .map(|(i, (result, mops))| {
            let t = if overlap { 0 } else { 10 * i as u64 };
            Op {
                index: i,
                process: i,
                invoke_us: t,
                complete_us: if overlap { 1_000 } else { t + 5 },
                mops,
                result,
                error: None,
            }
        })
        .collect()
}

use OpResult::{Fail, Info, Ok as Committed};

#[test]
fn a_serial_history_is_valid() {
    let h = history(
        vec![
            (Committed, vec![a("x", 1), r("x", &[1])]),
            (Committed, vec![r("x", &[1]), a("x", 2), a("y", 3)]),
            (Fail, vec![a("x", 4)]),
            (Committed, vec![r("x", &[1, 2]), r("y", &[3])]),
        ],
        false,
    );
    let report = check(&h);
    assert!(report.is_valid(), "{report}");
    assert_eq!((report.ok, report.failed), (3, 1));
    assert!(report.edges >= 3, "{report:?}");
}

#[test]
fn aborted_read_is_g1a() {
    let h = history(
        vec![(Fail, vec![a("x", 1)]), (Committed, vec![r("x", &[1])])],
        false,
    );
    let report = check(&h);
    assert!(
        report.anomalies.iter().any(|x| matches!(
            x,
            Anomaly::G1a {
                reader: 1,
                writer: 0,
                ..
            }
        )),
        "{report}"
    );
}

#[test]
fn intermediate_read_is_g1b() {
    let h = history(
        vec![
            (Committed, vec![a("x", 1), a("x", 2)]),
            (Committed, vec![r("x", &[1])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(
        report.anomalies.iter().any(|x| matches!(
            x,
            Anomaly::G1b {
                reader: 1,
                writer: 0,
                ..
            }
        )),
        "{report}"
    );
}

#[test]
fn write_cycle_is_g0() {
    let h = history(
        vec![
            (Committed, vec![a("x", 1), a("y", 2)]),
            (Committed, vec![a("x", 3), a("y", 4)]),
            (Committed, vec![r("x", &[1, 3]), r("y", &[4, 2])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(report.has_cycle(CycleKind::G0), "{report}");
}

#[test]
fn circular_information_flow_is_g1c() {
    let h = history(
        vec![
            (Committed, vec![a("x", 1), r("y", &[2])]),
            (Committed, vec![a("y", 2), r("x", &[1])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(report.has_cycle(CycleKind::G1c), "{report}");
    assert!(!report.has_cycle(CycleKind::G0));
}

#[test]
fn read_skew_is_g_single() {
    // T0 reads x before T1's append, then y after it.
    let h = history(
        vec![
            (Committed, vec![r("x", &[]), r("y", &[3])]),
            (Committed, vec![a("x", 2), a("y", 3)]),
            (Committed, vec![r("x", &[2])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(report.has_cycle(CycleKind::GSingle), "{report}");
}

#[test]
fn write_skew_is_g2() {
    let h = history(
        vec![
            (Committed, vec![r("x", &[]), r("y", &[]), a("x", 1)]),
            (Committed, vec![r("x", &[]), r("y", &[]), a("y", 2)]),
            (Committed, vec![r("x", &[1]), r("y", &[2])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(report.has_cycle(CycleKind::G2), "{report}");
    match report
        .anomalies
        .iter()
        .find(|x| matches!(x, Anomaly::Cycle { .. }))
    {
        Some(Anomaly::Cycle { steps, .. }) => {
            let txns: BTreeSet<usize> = steps.iter().map(|s| s.0).collect();
            assert_eq!(
                txns,
                BTreeSet::from([0, 1]),
                "names the transactions: {steps:?}"
            );
        }
        other => panic!("no cycle: {other:?}"),
    }
}

#[test]
fn unknown_outcomes_are_resolved_by_reads() {
    let h = history(
        vec![
            (Info, vec![a("x", 1)]),
            (Info, vec![a("x", 2)]),
            (Committed, vec![r("x", &[1])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(report.is_valid(), "{report}");
    assert_eq!(
        (report.unknown_committed, report.unknown_unresolved),
        (1, 1)
    );
}

#[test]
fn a_committed_append_missing_from_a_later_read_is_lost() {
    let h = history(
        vec![(Committed, vec![a("x", 1)]), (Committed, vec![r("x", &[])])],
        false,
    );
    let report = check(&h);
    assert!(
        report.anomalies.iter().any(|x| matches!(
            x,
            Anomaly::LostAppend {
                writer: 0,
                reader: 1,
                ..
            }
        )),
        "{report}"
    );
}

#[test]
fn diverging_reads_are_an_incompatible_order() {
    let h = history(
        vec![
            (Committed, vec![a("x", 1)]),
            (Committed, vec![a("x", 2)]),
            (Committed, vec![a("x", 3)]),
            (Committed, vec![r("x", &[1, 2])]),
            (Committed, vec![r("x", &[1, 3])]),
        ],
        true,
    );
    let report = check(&h);
    assert!(
        report
            .anomalies
            .iter()
            .any(|x| matches!(x, Anomaly::IncompatibleOrder { .. })),
        "{report}"
    );
}

#[test]
fn garbage_duplicates_and_missing_own_writes_are_reported() {
    let h = history(
        vec![
            (Committed, vec![a("x", 1)]),
            (Committed, vec![a("y", 1)]),
            (Committed, vec![r("z", &[9])]),
            (Committed, vec![a("w", 5), r("w", &[])]),
        ],
        true,
    );
    let report = check(&h);
    let has = |f: fn(&Anomaly) -> bool| report.anomalies.iter().any(f);
    assert!(
        has(|x| matches!(x, Anomaly::DuplicateAppend { value: 1, .. })),
        "{report}"
    );
    assert!(
        has(|x| matches!(x, Anomaly::GarbageRead { value: 9, .. })),
        "{report}"
    );
    assert!(
        has(|x| matches!(x, Anomaly::Internal { op: 3, .. })),
        "{report}"
    );
}
