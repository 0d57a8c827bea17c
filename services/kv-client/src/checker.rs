//! A list-append history checker in the style of Jepsen's Elle (Kingsbury & Alvaro, "Elle:
//! Inferring Isolation Anomalies from Experimental Observations").
//!
//! Every appended value is unique, so a read of a list names exactly which transactions wrote
//! before it and in what order. From the `Ok` reads the checker infers, per key, the version
//! order (the longest list read; every other read must be a prefix of it), then:
//!
//! - **G1a aborted read**: a read saw a value appended by a transaction that failed;
//! - **G1b intermediate read**: a read saw a transaction's append to a key but not that
//!   transaction's later append to the same key;
//! - **garbage read**: a value nobody appended; **duplicate append**; **internal**: a
//!   transaction did not see its own earlier appends;
//! - **incompatible order**: two reads of a key that are not prefixes of one another (a lost
//!   update);
//! - **lost append**: a committed append missing from a read that began after it completed
//!   (the store is meant to be strictly serializable; this is also how lost durability shows);
//! - **dependency cycles** among committed transactions over write-write (`ww`: consecutive in
//!   the version order), write-read (`wr`: the last value a read saw) and read-write (`rw`: a
//!   read missed the next version) edges: **G0** (a cycle of `ww` only), **G1c** (`ww` + `wr`),
//!   **G-single** (exactly one `rw`) and **G2** (several `rw`), each with the transactions and
//!   edges involved.
//!
//! Unknown (`Info`) transactions count as committed when any of their values was read, and are
//! left out otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;

use crate::history::{Mop, Op, OpResult};

/// A dependency between two committed transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Edge {
    Ww,
    Wr,
    Rw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CycleKind {
    G0,
    G1c,
    GSingle,
    G2,
}

/// One finding. Transactions are named by their index in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    DuplicateAppend {
        value: u64,
        ops: (usize, usize),
    },
    GarbageRead {
        op: usize,
        key: String,
        value: u64,
    },
    Internal {
        op: usize,
        key: String,
        read: Vec<u64>,
    },
    G1a {
        reader: usize,
        writer: usize,
        key: String,
        value: u64,
    },
    G1b {
        reader: usize,
        writer: usize,
        key: String,
        value: u64,
    },
    IncompatibleOrder {
        key: String,
        a: Vec<u64>,
        b: Vec<u64>,
    },
    LostAppend {
        writer: usize,
        reader: usize,
        key: String,
        value: u64,
    },
    Cycle {
        kind: CycleKind,
        /// `(from, edge, to)` steps; the last `to` is the first `from`.
        steps: Vec<(usize, Edge, usize)>,
    },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::DuplicateAppend { value, ops } => {
                write!(
                    f,
                    "duplicate append of {value} by T{} and T{}",
                    ops.0, ops.1
                )
            }
            Anomaly::GarbageRead { op, key, value } => {
                write!(
                    f,
                    "garbage read: T{op} read {value} in {key}, never appended"
                )
            }
            Anomaly::Internal { op, key, read } => {
                write!(
                    f,
                    "internal: T{op} read {key} = {read:?}, missing its own appends"
                )
            }
            Anomaly::G1a {
                reader,
                writer,
                key,
                value,
            } => write!(
                f,
                "G1a aborted read: T{reader} read {value} in {key}, appended by failed T{writer}"
            ),
            Anomaly::G1b {
                reader,
                writer,
                key,
                value,
            } => write!(
                f,
                "G1b intermediate read: T{reader} read {value} in {key}, not T{writer}'s final append"
            ),
            Anomaly::IncompatibleOrder { key, a, b } => {
                write!(f, "incompatible order of {key}: {a:?} vs {b:?}")
            }
            Anomaly::LostAppend {
                writer,
                reader,
                key,
                value,
            } => write!(
                f,
                "lost append: T{writer} committed {value} to {key}; T{reader}, begun after, did not see it"
            ),
            Anomaly::Cycle { kind, steps } => {
                write!(f, "{kind:?} cycle:")?;
                for (from, edge, to) in steps {
                    write!(f, " T{from} -{edge:?}-> T{to};")?;
                }
                Ok(())
            }
        }
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
    /// Unknown outcome, resolved to committed because a value was read.
    pub unknown_committed: usize,
    /// Unknown outcome, never observed: left out.
    pub unknown_unresolved: usize,
    /// Dependency edges inferred between committed transactions.
    pub edges: usize,
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Whether a cycle of this kind was found.
    pub fn has_cycle(&self, kind: CycleKind) -> bool {
        self.anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::Cycle { kind: k, .. } if *k == kind))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ok, {} failed, {} unknown resolved committed, {} unknown unresolved, {} edges, {} anomalies",
            self.ok,
            self.failed,
            self.unknown_committed,
            self.unknown_unresolved,
            self.edges,
            self.anomalies.len()
        )?;
        for a in self.anomalies.iter().take(20) {
            writeln!(f, "  {a}")?;
        }
        Ok(())
    }
}

/// Most cycles reported (every strongly connected component is still searched).
const MAX_CYCLES: usize = 50;

/// Check a list-append history.
pub fn check(ops: &[Op]) -> Report {
    let mut c = Checker::new(ops);
    c.index_appends();
    c.resolve_committed();
    c.check_reads();
    c.version_orders();
    c.lost_appends();
    c.dependency_cycles();
    c.report
}

struct Checker<'a> {
    ops: &'a [Op],
    /// value → (writer op, key)
    writer: HashMap<u64, (usize, &'a str)>,
    committed: HashSet<usize>,
    order: BTreeMap<&'a str, Vec<u64>>,
    report: Report,
}

impl<'a> Checker<'a> {
    fn new(ops: &'a [Op]) -> Self {
        Checker {
            ops,
            writer: HashMap::new(),
            committed: HashSet::new(),
            order: BTreeMap::new(),
            report: Report::default(),
        }
    }

    fn ok_reads(&self) -> impl Iterator<Item = (usize, usize, &'a str, &'a [u64])> + 'a {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.result == OpResult::Ok)
            .flat_map(|(i, op)| {
                op.mops
                    .iter()
                    .enumerate()
                    .filter_map(move |(m, mop)| match mop {
                        Mop::Read {
                            key,
                            value: Some(list),
                        } => Some((i, m, key.as_str(), list.as_slice())),
                        _ => None,
                    })
            })
    }

    fn index_appends(&mut self) {
        for (i, op) in self.ops.iter().enumerate() {
            for mop in &op.mops {
                if let Mop::Append { key, value } = mop
                    && let Some((other, _)) = self.writer.insert(*value, (i, key.as_str()))
                {
                    self.report.anomalies.push(Anomaly::DuplicateAppend {
                        value: *value,
                        ops: (other, i),
                    });
                }
            }
        }
    }

    fn resolve_committed(&mut self) {
        let observed: HashSet<usize> = self
            .ok_reads()
            .flat_map(|(_, _, _, list)| list.iter())
            .filter_map(|v| self.writer.get(v).map(|(w, _)| *w))
            .collect();
        for (i, op) in self.ops.iter().enumerate() {
            match op.result {
                OpResult::Ok => {
                    self.report.ok += 1;
                    self.committed.insert(i);
                }
                OpResult::Fail => self.report.failed += 1,
                OpResult::Info if observed.contains(&i) => {
                    self.report.unknown_committed += 1;
                    self.committed.insert(i);
                }
                OpResult::Info => self.report.unknown_unresolved += 1,
            }
        }
    }

    /// The reader's own appends to `key` before micro-op `m`.
    fn own_appends(&self, op: usize, m: usize, key: &str) -> Vec<u64> {
        self.ops[op].mops[..m]
            .iter()
            .filter_map(|mop| match mop {
                Mop::Append { key: k, value } if k == key => Some(*value),
                _ => None,
            })
            .collect()
    }

    /// What `op` read of `key` at micro-op `m` from other transactions: the list without its own
    /// appends at the tail. `None` (and an `Internal` anomaly) if its own appends are missing.
    fn external<'l>(&self, op: usize, m: usize, key: &str, list: &'l [u64]) -> Option<&'l [u64]> {
        let own = self.own_appends(op, m, key);
        if list.len() >= own.len() && list[list.len() - own.len()..] == own[..] {
            Some(&list[..list.len() - own.len()])
        } else {
            None
        }
    }

    fn check_reads(&mut self) {
        let reads: Vec<_> = self.ok_reads().collect();
        for (op, m, key, list) in reads {
            if self.external(op, m, key, list).is_none() {
                self.report.anomalies.push(Anomaly::Internal {
                    op,
                    key: key.into(),
                    read: list.to_vec(),
                });
            }
            let seen: HashSet<u64> = list.iter().copied().collect();
            for &value in list {
                let Some(&(writer, _)) = self.writer.get(&value) else {
                    self.report.anomalies.push(Anomaly::GarbageRead {
                        op,
                        key: key.into(),
                        value,
                    });
                    continue;
                };
                if self.ops[writer].result == OpResult::Fail {
                    self.report.anomalies.push(Anomaly::G1a {
                        reader: op,
                        writer,
                        key: key.into(),
                        value,
                    });
                }
                if writer != op && self.hides_later_append(writer, key, value, &seen) {
                    self.report.anomalies.push(Anomaly::G1b {
                        reader: op,
                        writer,
                        key: key.into(),
                        value,
                    });
                }
            }
        }
    }

    /// Whether `writer` appended to `key` after `value` and that later value is not in `seen`.
    fn hides_later_append(
        &self,
        writer: usize,
        key: &str,
        value: u64,
        seen: &HashSet<u64>,
    ) -> bool {
        let mut after = false;
        for mop in &self.ops[writer].mops {
            if let Mop::Append { key: k, value: v } = mop {
                if k != key {
                    continue;
                }
                if after && !seen.contains(v) {
                    return true;
                }
                after |= *v == value;
            }
        }
        false
    }

    fn version_orders(&mut self) {
        let reads: Vec<_> = self.ok_reads().collect();
        for &(_, _, key, list) in &reads {
            let longest = self.order.entry(key).or_default();
            if list.len() > longest.len() {
                *longest = list.to_vec();
            }
        }
        let mut reported = HashSet::new();
        for (_, _, key, list) in reads {
            let longest = &self.order[key];
            if longest[..list.len()] != *list && reported.insert(key) {
                self.report.anomalies.push(Anomaly::IncompatibleOrder {
                    key: key.into(),
                    a: list.to_vec(),
                    b: longest.clone(),
                });
            }
        }
    }

    fn lost_appends(&mut self) {
        let reads: Vec<_> = self.ok_reads().collect();
        for (writer, op) in self.ops.iter().enumerate() {
            if op.result != OpResult::Ok {
                continue;
            }
            for mop in &op.mops {
                let Mop::Append { key, value } = mop else {
                    continue;
                };
                let missed = reads.iter().find(|(reader, _, k, list)| {
                    *k == key
                        && self.ops[*reader].invoke_us > op.complete_us
                        && !list.contains(value)
                });
                if let Some(&(reader, ..)) = missed {
                    self.report.anomalies.push(Anomaly::LostAppend {
                        writer,
                        reader,
                        key: key.clone(),
                        value: *value,
                    });
                }
            }
        }
    }

    /// Every dependency edge between committed transactions, with the kinds that connect them.
    fn edges(&self) -> BTreeMap<(usize, usize), BTreeSet<Edge>> {
        let mut edges: BTreeMap<(usize, usize), BTreeSet<Edge>> = BTreeMap::new();
        let mut add = |from: usize, to: usize, e: Edge| {
            if from != to && self.committed.contains(&from) && self.committed.contains(&to) {
                edges.entry((from, to)).or_default().insert(e);
            }
        };
        for order in self.order.values() {
            for pair in order.windows(2) {
                if let (Some(a), Some(b)) = (self.writer.get(&pair[0]), self.writer.get(&pair[1])) {
                    add(a.0, b.0, Edge::Ww);
                }
            }
        }
        for (reader, m, key, list) in self.ok_reads() {
            let Some(ext) = self.external(reader, m, key, list) else {
                continue;
            };
            if let Some(w) = ext.last().and_then(|v| self.writer.get(v)) {
                add(w.0, reader, Edge::Wr);
            }
            let order = &self.order[key];
            if order.len() > ext.len()
                && order[..ext.len()] == *ext
                && let Some(w) = self.writer.get(&order[ext.len()])
            {
                add(reader, w.0, Edge::Rw);
            }
        }
        edges
    }

    fn dependency_cycles(&mut self) {
        let edges = self.edges();
        self.report.edges = edges.values().map(BTreeSet::len).sum();
        let all = [Edge::Ww, Edge::Wr, Edge::Rw];
        let mut found = 0;
        for scc in sccs(&edges, &all) {
            if found >= MAX_CYCLES {
                break;
            }
            let nodes: HashSet<usize> = scc.iter().copied().collect();
            let within: BTreeMap<_, _> = edges
                .iter()
                .filter(|((a, b), _)| nodes.contains(a) && nodes.contains(b))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            // Report the strongest anomaly this component holds.
            let cycle = [&[Edge::Ww][..], &[Edge::Ww, Edge::Wr][..], &all[..]]
                .iter()
                .find_map(|allowed| {
                    sccs(&within, allowed)
                        .into_iter()
                        .next()
                        .map(|c| find_cycle(&within, allowed, &c))
                });
            if let Some(steps) = cycle {
                found += 1;
                self.report.anomalies.push(Anomaly::Cycle {
                    kind: classify(&steps),
                    steps,
                });
            }
        }
    }
}

fn classify(steps: &[(usize, Edge, usize)]) -> CycleKind {
    let rw = steps.iter().filter(|s| s.1 == Edge::Rw).count();
    let wr = steps.iter().filter(|s| s.1 == Edge::Wr).count();
    match (rw, wr) {
        (0, 0) => CycleKind::G0,
        (0, _) => CycleKind::G1c,
        (1, _) => CycleKind::GSingle,
        _ => CycleKind::G2,
    }
}

/// Strongly connected components (of more than one transaction) over the allowed edge kinds.
fn sccs(edges: &BTreeMap<(usize, usize), BTreeSet<Edge>>, allowed: &[Edge]) -> Vec<Vec<usize>> {
    let mut g = DiGraphMap::<usize, ()>::new();
    for ((a, b), kinds) in edges {
        if kinds.iter().any(|k| allowed.contains(k)) {
            g.add_edge(*a, *b, ());
        }
    }
    tarjan_scc(&g).into_iter().filter(|c| c.len() > 1).collect()
}

/// A shortest cycle through the first node of `scc`, over allowed edges inside it; each step
/// labelled with the weakest allowed kind (ww before wr before rw).
fn find_cycle(
    edges: &BTreeMap<(usize, usize), BTreeSet<Edge>>,
    allowed: &[Edge],
    scc: &[usize],
) -> Vec<(usize, Edge, usize)> {
    let nodes: HashSet<usize> = scc.iter().copied().collect();
    let mut next: HashMap<usize, Vec<(usize, Edge)>> = HashMap::new();
    for ((a, b), kinds) in edges {
        if !nodes.contains(a) || !nodes.contains(b) {
            continue;
        }
        if let Some(k) = kinds.iter().find(|k| allowed.contains(k)) {
            next.entry(*a).or_default().push((*b, *k));
        }
    }
    let start = scc[0];
    let mut parent: HashMap<usize, (usize, Edge)> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &(m, e) in next.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
            if m == start {
                let mut steps = vec![(n, e, start)];
                let mut cur = n;
                while cur != start {
                    let (p, pe) = parent[&cur];
                    steps.push((p, pe, cur));
                    cur = p;
                }
                steps.reverse();
                return steps;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = parent.entry(m) {
                v.insert((n, e));
                queue.push_back(m);
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests;
