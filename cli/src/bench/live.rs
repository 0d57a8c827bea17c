//! `tandem commit compare --live`: the same checkout run as an orchestrated saga and as each
//! atomic commit protocol over the real services, in one run on one stack, side by side.
//!
//! It is the bench with a different loop over it: the stack (the real binaries, plus 2F+1
//! acceptors when a protocol needs them) starts once ([`super::target`]); each protocol is a
//! bench workload ([`super::workloads`]); each (workload, protocol, clients) is one bench level
//! ([`super::level`]: the closed loop, latency, the processes' counters). What this module adds:
//!
//! - [`PROTOCOLS`]: the compared protocols as data — adding one (3PC, quorum 3PC) is one entry
//!   here and its bench workload;
//! - the two workloads: `distinct` (orders spread over many SKUs) and `hot` (every client orders
//!   one of a few SKUs);
//! - messages per transaction: every request any process served on a protocol route, counted
//!   by the shared server middleware (`tandem_kit::stats::exchange`), times two (the request and
//!   its response), next to the formula for the topology actually run ([`Formula`]).
//!
//! - message delays on the critical path, measured: every protocol message carries a hop count
//!   (`tandem_kit::hop`, set by the shared server middleware and outgoing call), and the
//!   process that started a transaction counts its longest chain (`GET /stats` →
//!   `critical_paths`); the choreographed saga carries it in its events. Beside the formula.
//!
//! The choreographed saga's messages are its events, counted at NATS ([`super::events`]): a
//! publish and JetStream's acknowledgement, a delivery and the consumer's ack, two each.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::report::Level;
use super::workloads::checkout_2pc::checkout_steps;
use super::workloads::{Load, Workload};
use super::{BenchArgs, Ceilings, RequestMode, StackMode, level, prime, stats, target};
use crate::launch::RunningStack;

/// The topology of a run: N participants (the checkout's services), A acceptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub participants: usize,
    pub acceptors: usize,
}

/// A protocol's failure-free cost by formula, for the topology actually run, over HTTP: a
/// request and its response are two messages (docs/commit-protocols.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Formula {
    pub messages: usize,
    pub messages_formula: &'static str,
    /// Message delays until the last participant has applied the outcome.
    pub delays: usize,
    pub delays_formula: &'static str,
}

/// One compared protocol.
pub struct Protocol {
    /// Its name in the table (and in `--protocols`).
    pub name: &'static str,
    /// The bench workload that runs the checkout under it.
    pub workload: Workload,
    /// Acceptors it needs beside the stack (2F+1; 0: none).
    pub acceptors: usize,
    pub formula: fn(Topology) -> Formula,
    /// Who holds locks, and how long (a sentence for the table's legend).
    pub locks: &'static str,
}

fn saga_formula(t: Topology) -> Formula {
    Formula {
        messages: 2 * t.participants,
        messages_formula: "2N: each step's action and its answer",
        delays: 2 * t.participants,
        delays_formula: "2N: the steps run one after another",
    }
}

fn choreo_formula(t: Topology) -> Formula {
    // N+1 events (placed, one per step), each delivered to N+1 durable consumers (the orders
    // entry point and every service).
    let events = t.participants + 1;
    Formula {
        messages: 2 * events + 2 * events * events,
        messages_formula: "2E+2E(N+1), E = N+1 events: each published and acknowledged, \
                           delivered to every one of the N+1 consumers and acknowledged",
        delays: 2 * events,
        delays_formula: "2(N+1): each event published, then delivered, one after another",
    }
}

/// Plain and quorum 3PC alike when nothing fails (the quorums and PreAbort only matter to
/// the termination protocol).
fn three_pc_formula(t: Topology) -> Formula {
    Formula {
        messages: 6 * t.participants,
        messages_formula: "6N: Begin and P0's BeginCommit, CanCommit and vote to the N-1 others, \
                           PreCommit and ack, DoCommit and its answer",
        delays: 8,
        delays_formula: "8: Begin, BeginCommit, CanCommit, vote, PreCommit, ack, DoCommit, answer",
    }
}

fn two_pc_formula(t: Topology) -> Formula {
    Formula {
        messages: 4 * t.participants,
        messages_formula: "4N: Prepare, vote, Commit, ack",
        delays: 6,
        delays_formula: "6 as built: Prepare, vote, the first Commit and its ack (awaited: the \
                         mid-broadcast crash point sits after it), the others' Commit and ack \
                         (4 if the first were not awaited)",
    }
}

fn paxos_commit_formula(t: Topology) -> Formula {
    let (n, a) = (t.participants, t.acceptors);
    Formula {
        messages: 4 * n + 2 * n * a + 2 * a,
        messages_formula: "4N+2NA+2A: Prepare and answer, 2a to each acceptor and answer, \
                           one 2b bundle per acceptor and answer, outcome and ack",
        delays: 5,
        delays_formula: "5: Prepare, 2a, 2b, outcome, ack",
    }
}

/// The compared protocols, in table order.
pub const PROTOCOLS: &[Protocol] = &[
    Protocol {
        name: "saga",
        workload: Workload::Checkout,
        acceptors: 0,
        formula: saga_formula,
        locks: "each step's local transaction only (no lock held between steps)",
    },
    Protocol {
        name: "saga-choreo",
        workload: Workload::CheckoutChoreo,
        acceptors: 0,
        formula: choreo_formula,
        locks: "each step's local transaction only (no coordinator, no lock between steps)",
    },
    Protocol {
        name: "2pc",
        workload: Workload::Checkout2pc,
        acceptors: 0,
        formula: two_pc_formula,
        locks: "every participant from its vote until the coordinator's Commit arrives",
    },
    Protocol {
        name: "3pc",
        workload: Workload::Checkout3pc,
        acceptors: 0,
        formula: three_pc_formula,
        locks: "every participant from its vote until DoCommit arrives",
    },
    Protocol {
        name: "3pc-quorum",
        workload: Workload::Checkout3pcQuorum,
        acceptors: 0,
        formula: three_pc_formula,
        locks: "every participant from its vote until DoCommit arrives (a blocked minority \
                holds them until its partition heals)",
    },
    Protocol {
        name: "paxos-commit",
        workload: Workload::CheckoutPaxos,
        acceptors: 3,
        formula: paxos_commit_formula,
        locks: "every participant from its vote until the leader's outcome arrives",
    },
];

/// The protocols named in `names` (all when empty), in table order.
pub fn select(names: &[String]) -> anyhow::Result<Vec<&'static Protocol>> {
    for n in names {
        anyhow::ensure!(
            PROTOCOLS.iter().any(|p| p.name == n),
            "unknown protocol {n:?}: expected one of {}",
            PROTOCOLS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(PROTOCOLS
        .iter()
        .filter(|p| names.is_empty() || names.iter().any(|n| n == p.name))
        .collect())
}

/// Requests that are not protocol messages: the client's own (start a run, long-poll it) and
/// the stack's housekeeping. Every other `POST` a process serves during a level is one.
const NOT_PROTOCOL: [&str; 5] = [
    "POST /sagas",
    "POST /orders",
    "POST /transactions",
    "POST /definitions",
    "POST /noop",
];

/// Protocol messages per transaction from a level's requests per operation: two per `POST`
/// exchange (request and response), the client's own requests and every `GET` left out.
pub fn protocol_messages(exchanges_per_op: &BTreeMap<String, f64>) -> f64 {
    exchanges_per_op
        .iter()
        .filter(|(route, _)| route.starts_with("POST ") && !NOT_PROTOCOL.contains(&route.as_str()))
        .map(|(_, n)| 2.0 * n)
        .sum()
}

/// What `compare --live` runs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The Postgres server (any database URL on it).
    pub database_url: String,
    /// Database name prefix of the run's own stack (dropped and recreated at start).
    pub db_prefix: String,
    pub bin_dir: Option<PathBuf>,
    pub clients: Vec<usize>,
    pub warmup: f64,
    pub duration: f64,
    /// SKUs of the `distinct` workload.
    pub skus: usize,
    /// SKUs shared by every client in the `hot` workload (0: no `hot` workload).
    pub hot_skus: usize,
    /// Protocol names (empty: all of [`PROTOCOLS`]).
    pub protocols: Vec<String>,
    /// NATS with JetStream, for the choreographed saga.
    pub nats_url: String,
}

/// One (protocol, workload, clients): measured in the running system, beside the formula.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub protocol: &'static str,
    /// `distinct` or `hot`.
    pub workload: &'static str,
    pub clients: usize,
    /// Transactions started (warm-up included): what the per-transaction figures divide by.
    pub transactions: u64,
    /// Protocol messages per transaction, counted by every process.
    pub messages_per_txn: f64,
    pub formula: Formula,
    /// Message delays on the critical path, measured (the hop count every message carries),
    /// averaged over the transactions that ended in the row; None if none was measured.
    pub delays_measured: Option<f64>,
    /// The longest critical path measured in the row.
    pub delays_measured_max: Option<u32>,
    /// Transactions ended in the row by their critical path's delays (hops → how many), those
    /// where no message was lost and no timer fired: what `delays_measured` averages.
    pub critical_paths: BTreeMap<u32, u64>,
    /// Transactions ended in the row where a message was lost or a timer fired (a timeout on
    /// a slow machine, a resend), by their delays: kept out of the failure-free figures.
    pub critical_paths_disturbed: BTreeMap<u32, u64>,
    /// The counted messages round to the formula (meaningful failure-free: aborts and retries
    /// change the count).
    pub messages_match: bool,
    /// Durable commit points per transaction, every process together.
    pub forced_writes_per_txn: f64,
    pub forced_writes_by_component: BTreeMap<String, f64>,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The longest-held participant's lock hold (vote to outcome), p50 / p99, for the atomic
    /// commit protocols; what a transaction on the same row waits behind.
    pub lock_hold_p50_ms: Option<f64>,
    pub lock_hold_p99_ms: Option<f64>,
    /// Measured operations that did not end committed / completed, of all measured.
    pub abort_rate: f64,
    pub errors: BTreeMap<String, u64>,
    /// Requests served per transaction by route, all processes together.
    pub requests_per_txn: BTreeMap<String, f64>,
}

/// What a fault scenario showed (filled in by the command, from the demos).
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    pub protocol: &'static str,
    pub scenario: &'static str,
    /// What the demo shows when its checks pass (`blocked`, `completed` …).
    pub outcome: &'static str,
    /// The demo's checks passed.
    pub passed: bool,
    pub seconds: f64,
    /// On failure, the end of the demo's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub machine: Value,
    pub postgres: Value,
    pub topology: Topology,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub hot_skus: usize,
    pub rows: Vec<Row>,
    pub faults: Vec<FaultRow>,
}

impl LiveOptions {
    fn bench_args(&self, protocols: &[&Protocol]) -> BenchArgs {
        let acceptors = protocols.iter().map(|p| p.acceptors).max().unwrap_or(0);
        BenchArgs {
            running: RunningStack::default(),
            database_url: super::without_tls(&self.database_url),
            db_prefix: self.db_prefix.clone(),
            clients: self.clients.clone(),
            duration: self.duration,
            warmup: self.warmup,
            quiet: 0.0,
            // The stack serves them all (NATS and the orders entry point for the choreography).
            workloads: protocols.iter().map(|p| p.workload).collect(),
            no_ceiling: true,
            no_direct: true,
            stack: StackMode::Processes,
            bin_dir: self.bin_dir.clone(),
            request: RequestMode::PostWait,
            acceptors: u8::try_from(acceptors).unwrap_or(u8::MAX),
            orchestrator_pool: 20,
            service_pool: 5,
            skus: self.skus,
            hot_skus: 0,
            nats_url: self.nats_url.clone(),
            purge_retention: None,
            json: false,
            db_tls: false,
        }
    }
}

/// The databases a run with `opts` uses (each process creates its own).
pub fn databases(opts: &LiveOptions) -> anyhow::Result<Vec<String>> {
    let layout = crate::launch::Layout::new(&opts.database_url, &opts.db_prefix);
    let acceptors = select(&opts.protocols)?
        .iter()
        .map(|p| p.acceptors)
        .max()
        .unwrap_or(0);
    let mut names = layout.databases();
    names.extend((0..acceptors).map(|k| layout.database(&target::acceptor(k as u8))));
    Ok(names)
}

fn row(p: &Protocol, workload: &'static str, topology: Topology, l: &Level) -> Row {
    let o = &l.orchestrated;
    // The choreography's events: publish and ack, each delivery and its ack.
    let events = l.events.as_ref().map_or(0.0, |e| {
        2.0 * e.published_per_saga + 2.0 * e.deliveries_per_saga
    });
    let messages = protocol_messages(&l.exchanges_per_op) + events;
    let ended: u64 = l.critical_paths.values().sum();
    let hops: u64 = l
        .critical_paths
        .iter()
        .map(|(h, n)| u64::from(*h) * n)
        .sum();
    let formula = (p.formula)(topology);
    let failed: u64 = o.errors.values().sum();
    let measured = o.completed + failed;
    let holds = |f: fn(&super::measure::Latency) -> f64| {
        o.reported
            .iter()
            .filter(|(k, _)| k.starts_with("lock hold "))
            .map(|(_, v)| f(v))
            .reduce(f64::max)
    };
    Row {
        protocol: p.name,
        workload,
        clients: l.clients,
        transactions: o.total_ops,
        messages_per_txn: messages,
        messages_match: (messages - formula.messages as f64).abs() < 0.5,
        formula,
        delays_measured: (ended > 0).then(|| hops as f64 / ended as f64),
        delays_measured_max: l.critical_paths.keys().next_back().copied(),
        critical_paths: l.critical_paths.clone(),
        critical_paths_disturbed: l.critical_paths_disturbed.clone(),
        forced_writes_per_txn: l.forced_writes_per_saga,
        forced_writes_by_component: l
            .transactions
            .iter()
            .map(|(c, t)| (c.clone(), t.forced_writes_per_saga))
            .collect(),
        per_sec: o.per_sec,
        p50_ms: o.latency.p50_ms,
        p99_ms: o.latency.p99_ms,
        lock_hold_p50_ms: holds(|l| l.p50_ms),
        lock_hold_p99_ms: holds(|l| l.p99_ms),
        abort_rate: if measured > 0 {
            failed as f64 / measured as f64
        } else {
            0.0
        },
        errors: o.errors.clone(),
        requests_per_txn: l.exchanges_per_op.clone(),
    }
}

/// Start the stack, run every (workload, protocol, clients) and report; the stack stops when
/// this returns. `faults` stays empty (the command adds the demos' rows).
pub async fn run(opts: LiveOptions) -> anyhow::Result<LiveReport> {
    let protocols = select(&opts.protocols)?;
    let acceptors = protocols.iter().map(|p| p.acceptors).max().unwrap_or(0);
    let mut args = opts.bench_args(&protocols);
    let postgres = stats::postgres_settings(&args.database_url).await?;
    let machine = stats::machine();
    eprintln!("starting the stack …");
    let t = target::start(&args).await?;
    target::wait_healthy(&t).await?;
    let topology = Topology {
        participants: checkout_steps(),
        acceptors,
    };
    let loads: Vec<(Workload, Box<dyn Load>)> = protocols
        .iter()
        .map(|p| (p.workload, p.workload.load(&args)))
        .collect();
    for (_, load) in &loads {
        load.prepare(&t).await?;
    }
    prime(&t, &args, &loads).await?;
    let mut workloads = vec![("distinct", 0)];
    if opts.hot_skus > 0 {
        workloads.push(("hot", opts.hot_skus));
    }
    let mut rows = Vec::new();
    for (name, hot) in workloads {
        args.hot_skus = hot;
        for p in &protocols {
            let load = (p.workload, p.workload.load(&args));
            for &c in &opts.clients {
                let mut ceilings = Ceilings(BTreeMap::new());
                let l = level(&t, &args, &load, c, &mut ceilings).await?;
                rows.push(row(p, name, topology, &l));
            }
        }
    }
    Ok(LiveReport {
        machine,
        postgres,
        topology,
        warmup_secs: opts.warmup,
        duration_secs: opts.duration,
        hot_skus: opts.hot_skus,
        rows,
        faults: vec![],
    })
}

/// A fault scenario: one of the scripted demos (`tandem commit demo …`), run as it ships.
pub struct FaultScenario {
    pub protocol: &'static str,
    pub scenario: &'static str,
    /// What the demo shows when its checks pass.
    pub outcome: &'static str,
    /// `tandem` arguments that run it.
    pub command: &'static [&'static str],
    /// Its option naming the Postgres server.
    pub server_flag: &'static str,
}

/// The fault scenarios, one entry per demo (3PC's join here with their demos).
pub const FAULT_SCENARIOS: &[FaultScenario] = &[
    FaultScenario {
        protocol: "2pc",
        scenario: "coordinator crashes after 3 YES votes (then restarts)",
        outcome: "blocked",
        command: &["commit", "demo", "2pc-blocking"],
        server_flag: "--database-url",
    },
    FaultScenario {
        protocol: "3pc",
        scenario: "coordinator crashes after PreCommit (beside 2PC's crash)",
        outcome: "terminated",
        command: &["commit", "demo", "3pc-unblocks"],
        server_flag: "--server-url",
    },
    FaultScenario {
        protocol: "3pc",
        scenario: "partition {coordinator, P0} | {P1, P2} from PreCommit on",
        outcome: "split",
        command: &["commit", "demo", "3pc-partition"],
        server_flag: "--server-url",
    },
    // The same demo's second half (it runs once for both rows).
    FaultScenario {
        protocol: "3pc-quorum",
        scenario: "the same partition under quorum 3PC (Vc = Va = 2), then healed",
        outcome: "blocked",
        command: &["commit", "demo", "3pc-partition"],
        server_flag: "--server-url",
    },
    FaultScenario {
        protocol: "paxos-commit",
        scenario: "leader crashes after the votes; +1 acceptor down; 2 of 3 down",
        outcome: "completed",
        command: &["commit", "demo", "paxos"],
        server_flag: "--server-url",
    },
];

/// Run the fault scenarios of `protocols` with the `tandem` executable `exe` (each demo starts
/// its own processes on its own databases), output captured; a failed demo is a row that says
/// so, not an error.
pub async fn run_faults(
    exe: &std::path::Path,
    opts: &LiveOptions,
    protocols: &[&Protocol],
) -> Vec<FaultRow> {
    let mut rows: Vec<FaultRow> = Vec::new();
    let mut ran: Vec<(&[&str], FaultRow)> = Vec::new();
    for f in FAULT_SCENARIOS
        .iter()
        .filter(|f| protocols.iter().any(|p| p.name == f.protocol))
    {
        // A demo that shows two protocols' scenarios runs once.
        if let Some((_, done)) = ran.iter().find(|(c, _)| *c == f.command) {
            rows.push(FaultRow {
                protocol: f.protocol,
                scenario: f.scenario,
                outcome: f.outcome,
                ..done.clone()
            });
            continue;
        }
        eprintln!("fault scenario: {} {} …", f.protocol, f.scenario);
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(f.command)
            .args([f.server_flag, opts.database_url.as_str()])
            .kill_on_drop(true);
        if let Some(d) = &opts.bin_dir {
            cmd.arg("--bin-dir").arg(d);
        }
        let started = std::time::Instant::now();
        let out = cmd.output().await;
        let seconds = started.elapsed().as_secs_f64();
        let failure = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let lines: Vec<&str> = text.lines().collect();
                Some(lines[lines.len().saturating_sub(5)..].join("\n"))
            }
            Err(e) => Some(format!("could not run {}: {e}", exe.display())),
        };
        let row = FaultRow {
            protocol: f.protocol,
            scenario: f.scenario,
            outcome: f.outcome,
            passed: failure.is_none(),
            seconds,
            failure,
        };
        ran.push((f.command, row.clone()));
        rows.push(row);
    }
    rows
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The report as text tables.
pub fn print(r: &LiveReport) {
    println!(
        "machine: {}  postgres: {}",
        r.machine,
        r.postgres
            .get("server_version")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );
    println!(
        "the checkout over the real services, N = {} participants, {} acceptors; warm-up {} s, \
         measured {} s per row; hot = {} SKUs shared by every client\n",
        r.topology.participants, r.topology.acceptors, r.warmup_secs, r.duration_secs, r.hot_skus
    );
    println!(
        "{:<13} {:<8} {:>3} {:>20} {:>14} {:>8} {:>8} {:>8} {:>8} {:>13} {:>7}",
        "protocol",
        "workload",
        "C",
        "messages/txn [form]",
        "delays",
        "forced",
        "per s",
        "p50 ms",
        "p99 ms",
        "lock p50/p99",
        "aborts"
    );
    for row in &r.rows {
        let f = &row.formula;
        println!(
            "{:<13} {:<8} {:>3} {:>20} {:>14} {:>8.2} {:>8.1} {:>8.1} {:>8.1} {:>13} {:>6.1}%",
            row.protocol,
            row.workload,
            row.clients,
            format!(
                "{:.2} [{}]{}",
                row.messages_per_txn,
                f.messages,
                if row.messages_match { "" } else { "*" }
            ),
            format!(
                "{} [{}]{}",
                row.delays_measured
                    .map_or_else(|| "-".to_string(), |d| format!("{d:.2}")),
                f.delays,
                match row.critical_paths_disturbed.values().sum::<u64>() {
                    0 => String::new(),
                    n => format!(" +{n}"),
                }
            ),
            row.forced_writes_per_txn,
            row.per_sec,
            row.p50_ms,
            row.p99_ms,
            format!(
                "{}/{}",
                opt_ms(row.lock_hold_p50_ms),
                opt_ms(row.lock_hold_p99_ms)
            ),
            100.0 * row.abort_rate
        );
    }
    println!();
    print_legend(r);
    print_faults(&r.faults);
}

/// Each protocol's formulas and locks, and what the columns are.
fn print_legend(r: &LiveReport) {
    let mut seen = Vec::new();
    for row in &r.rows {
        if !seen.contains(&row.protocol) {
            seen.push(row.protocol);
            let p = PROTOCOLS.iter().find(|p| p.name == row.protocol);
            println!(
                "{}: messages {}; delays {}; locks: {}",
                row.protocol,
                row.formula.messages_formula,
                row.formula.delays_formula,
                p.map_or("", |p| p.locks)
            );
        }
    }
    println!(
        "messages: every POST any process served on a protocol route, ×2 (request and answer), \
         per transaction started; * = differs from the formula (aborts and retries add messages)."
    );
    println!(
        "delays: measured, the hop count every message carries (its longest chain per transaction, \
         averaged) [the formula]; +N: transactions where a message was lost or a timer fired, \
         left out of the average (a resend costs two delays more). lock: the longest-held \
         participant's lock hold, vote to outcome."
    );
}

/// The fault scenarios' rows, if any ran.
fn print_faults(faults: &[FaultRow]) {
    if !faults.is_empty() {
        println!("\nfault scenarios (the scripted demos, run as they ship):");
        for f in faults {
            println!(
                "{:<13} {:<58} {:<10} {:>6.1} s  {}",
                f.protocol,
                f.scenario,
                f.outcome,
                f.seconds,
                if f.passed {
                    "checks passed".to_string()
                } else {
                    format!(
                        "FAILED: {}",
                        f.failure.clone().unwrap_or_default().replace('\n', " | ")
                    )
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_for_three_participants_and_three_acceptors() {
        let t = Topology {
            participants: 3,
            acceptors: 3,
        };
        let m: Vec<(usize, usize)> = PROTOCOLS
            .iter()
            .map(|p| ((p.formula)(t).messages, (p.formula)(t).delays))
            .collect();
        assert_eq!(m, vec![(6, 6), (40, 8), (12, 6), (18, 8), (18, 8), (36, 5)]);
    }

    #[test]
    fn only_protocol_posts_count_twice() {
        let per_op = BTreeMap::from([
            ("POST /transactions".to_string(), 1.0),
            ("GET /transactions/{id}".to_string(), 1.0),
            ("POST /2pc/prepare".to_string(), 3.0),
            ("POST /2pc/commit".to_string(), 3.0),
            ("GET /2pc/status".to_string(), 0.01),
        ]);
        assert_eq!(protocol_messages(&per_op), 12.0);
    }

    #[test]
    fn unknown_protocols_are_named() {
        let Err(e) = select(&["2pc".into(), "4pc".into()]) else {
            panic!("4pc was accepted");
        };
        assert!(e.to_string().contains("\"4pc\""), "{e}");
        let all = select(&[]).unwrap();
        assert_eq!(all.len(), PROTOCOLS.len());
        let one = select(&["paxos-commit".into()]).unwrap();
        assert_eq!(one[0].acceptors, 3);
    }
}
