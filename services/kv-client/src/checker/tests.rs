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

/// One anomaly the checker must find in a hand-made history.
struct Case {
    name: &'static str,
    ops: Vec<(OpResult, Vec<Mop>)>,
    overlap: bool,
    found: fn(&Report) -> bool,
}

fn any(report: &Report, f: fn(&Anomaly) -> bool) -> bool {
    report.anomalies.iter().any(f)
}

// A pure table of data: one entry per anomaly, long because the histories are written out.
#[allow(clippy::too_many_lines)]
fn anomaly_cases() -> Vec<Case> {
    vec![
        Case {
            name: "an aborted read is G1a",
            ops: vec![(Fail, vec![a("x", 1)]), (Committed, vec![r("x", &[1])])],
            overlap: false,
            found: |rep| {
                any(rep, |x| {
                    matches!(
                        x,
                        Anomaly::G1a {
                            reader: 1,
                            writer: 0,
                            ..
                        }
                    )
                })
            },
        },
        Case {
            name: "an intermediate read is G1b",
            ops: vec![
                (Committed, vec![a("x", 1), a("x", 2)]),
                (Committed, vec![r("x", &[1])]),
            ],
            overlap: true,
            found: |rep| {
                any(rep, |x| {
                    matches!(
                        x,
                        Anomaly::G1b {
                            reader: 1,
                            writer: 0,
                            ..
                        }
                    )
                })
            },
        },
        Case {
            name: "a write cycle is G0",
            ops: vec![
                (Committed, vec![a("x", 1), a("y", 2)]),
                (Committed, vec![a("x", 3), a("y", 4)]),
                (Committed, vec![r("x", &[1, 3]), r("y", &[4, 2])]),
            ],
            overlap: true,
            found: |rep| rep.has_cycle(CycleKind::G0),
        },
        Case {
            name: "circular information flow is G1c, not G0",
            ops: vec![
                (Committed, vec![a("x", 1), r("y", &[2])]),
                (Committed, vec![a("y", 2), r("x", &[1])]),
            ],
            overlap: true,
            found: |rep| rep.has_cycle(CycleKind::G1c) && !rep.has_cycle(CycleKind::G0),
        },
        Case {
            // T0 reads x before T1's append, then y after it.
            name: "read skew is G-single",
            ops: vec![
                (Committed, vec![r("x", &[]), r("y", &[3])]),
                (Committed, vec![a("x", 2), a("y", 3)]),
                (Committed, vec![r("x", &[2])]),
            ],
            overlap: true,
            found: |rep| rep.has_cycle(CycleKind::GSingle),
        },
        Case {
            name: "a committed append missing from a later read is lost",
            ops: vec![(Committed, vec![a("x", 1)]), (Committed, vec![r("x", &[])])],
            overlap: false,
            found: |rep| {
                any(rep, |x| {
                    matches!(
                        x,
                        Anomaly::LostAppend {
                            writer: 0,
                            reader: 1,
                            ..
                        }
                    )
                })
            },
        },
        Case {
            name: "diverging reads are an incompatible order",
            ops: vec![
                (Committed, vec![a("x", 1)]),
                (Committed, vec![a("x", 2)]),
                (Committed, vec![a("x", 3)]),
                (Committed, vec![r("x", &[1, 2])]),
                (Committed, vec![r("x", &[1, 3])]),
            ],
            overlap: true,
            found: |rep| any(rep, |x| matches!(x, Anomaly::IncompatibleOrder { .. })),
        },
        Case {
            name: "garbage, duplicate appends and missing own writes are reported",
            ops: vec![
                (Committed, vec![a("x", 1)]),
                (Committed, vec![a("y", 1)]),
                (Committed, vec![r("z", &[9])]),
                (Committed, vec![a("w", 5), r("w", &[])]),
            ],
            overlap: true,
            found: |rep| {
                any(rep, |x| {
                    matches!(x, Anomaly::DuplicateAppend { value: 1, .. })
                }) && any(rep, |x| matches!(x, Anomaly::GarbageRead { value: 9, .. }))
                    && any(rep, |x| matches!(x, Anomaly::Internal { op: 3, .. }))
            },
        },
    ]
}

/// Every case is checked, and every one that is missed is named.
#[test]
fn each_anomaly_is_found() {
    let missed: Vec<String> = anomaly_cases()
        .into_iter()
        .filter_map(|case| {
            let report = check(&history(case.ops, case.overlap));
            (!(case.found)(&report)).then(|| format!("{}: {report}", case.name))
        })
        .collect();
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
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
