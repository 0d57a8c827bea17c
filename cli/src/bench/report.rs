//! The bench's results ([`Report`]) and their text table.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::ceiling::Ceiling;
use super::commit::CommitCosts;
use super::events::EventCosts;
use super::measure::{Latency, LoopResult};
use super::stats::DbTransactions;
use super::workloads::Workload;

#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub workload: Workload,
    pub clients: usize,
    pub orchestrated: LoopResult,
    pub transactions: BTreeMap<String, DbTransactions>,
    /// Durable commit points per operation, all processes together.
    pub forced_writes_per_saga: f64,
    /// Requests served per operation by `METHOD route`, all processes together (each is two
    /// messages), as the shared server middleware counts them.
    pub exchanges_per_op: BTreeMap<String, f64>,
    /// Transactions that ended in the level by the message delays on their critical path,
    /// measured by the hop count on every message (hops → how many); failure-free ones only.
    pub critical_paths: BTreeMap<u32, u64>,
    /// The same for transactions where a message was lost or a timer fired (a resend costs
    /// more delays than the formula's failure-free path).
    pub critical_paths_disturbed: BTreeMap<u32, u64>,
    /// For an atomic commit protocol: its costs counted in the running system, beside the
    /// formulas.
    pub commit: Option<CommitCosts>,
    /// For the choreographed checkout: its messages, counted at NATS.
    pub events: Option<EventCosts>,
    /// CPU ms per saga of the benchmark's own clients.
    pub client_cpu_ms_per_saga: Option<f64>,
    pub ceiling: Option<Ceiling>,
    /// sagas/s ÷ ceiling commits/s.
    pub ceiling_ratio: Option<f64>,
    pub direct: Option<LoopResult>,
    /// orchestrated sagas/s ÷ direct sequences/s.
    pub throughput_vs_direct: Option<f64>,
    /// orchestrated p50 ÷ direct p50.
    pub latency_vs_direct_p50: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Value,
    pub postgres: Value,
    pub stack: String,
    pub request_mode: String,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub levels: Vec<Level>,
    /// `--purge-retention`: the checkout without and with the retention purge.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purge: Vec<super::purge::PurgeLevel>,
    /// Peak RSS (VmHWM) per process, KiB, at the end of the run.
    pub peak_rss_kib: BTreeMap<String, Option<u64>>,
}

fn errors_text(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        "0".into()
    } else {
        e.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

pub fn print(r: &Report) {
    println!("machine: {}  postgres: {}", r.machine, r.postgres);
    println!(
        "stack: {}; requests: {}; warm-up {} s, measured {} s per run\n",
        r.stack, r.request_mode, r.warmup_secs, r.duration_secs
    );
    println!(
        "{:<12} {:>3} {:<13} {:>9} {:>8} {:>8} {:>8} {:>8}  errors",
        "workload", "C", "mode", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for l in &r.levels {
        print_level(l);
    }
    super::purge::print(&r.purge);
    println!();
    for (c, rss) in &r.peak_rss_kib {
        println!(
            "peak RSS {c}: {}",
            rss.map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
    }
}

fn print_level(l: &Level) {
    let w = l.workload.label();
    let row = |mode: &str, per: f64, lat: &Latency, err: String| {
        println!(
            "{:<12} {:>3} {:<13} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}",
            w, l.clients, mode, per, lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.max_ms, err
        );
    };
    let o = &l.orchestrated;
    row(
        "orchestrated",
        o.per_sec,
        &o.latency,
        errors_text(&o.errors),
    );
    if let Some(d) = &l.direct {
        row("direct", d.per_sec, &d.latency, errors_text(&d.errors));
    }
    if let Some(c) = &l.ceiling {
        let mode = format!("ceiling({})", c.connections);
        row(&mode, c.commits_per_sec, &c.latency, String::new());
    }
    println!(
        "{:>14} sagas/ceiling {}   vs direct: throughput {}  p50 latency {}",
        "",
        opt(l.ceiling_ratio, 3),
        opt(l.throughput_vs_direct, 2),
        opt(l.latency_vs_direct_p50, 2),
    );
    let per_component = |f: &dyn Fn(&DbTransactions) -> String| -> String {
        l.transactions
            .iter()
            .map(|(c, t)| format!("{c} {}", f(t)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tx = per_component(&|t| {
        format!(
            "{:.2}w+{:.2}r (pg {})",
            t.writes_per_saga,
            t.reads_per_saga,
            opt(t.pg_xact_commit_per_saga, 2)
        )
    });
    println!("{:>14} transactions/saga: {tx}", "");
    let cpu = per_component(&|t| {
        format!(
            "{} + pg {:.2}",
            opt(t.process_cpu_ms_per_saga, 2),
            t.postgres_cpu_ms_per_saga
        )
    });
    println!(
        "{:>14} CPU ms/saga: {cpu}, clients {}",
        "",
        opt(l.client_cpu_ms_per_saga, 2)
    );
    let forced = per_component(&|t| format!("{:.2}", t.forced_writes_per_saga));
    println!(
        "{:>14} forced writes/op: {:.2} ({forced})",
        "", l.forced_writes_per_saga
    );
    if let Some(c) = &l.commit {
        print_commit(c);
    }
    if let Some(e) = &l.events {
        println!(
            "{:>14} events/checkout published {:.2}, delivered {:.2} (to {} durable consumers)",
            "", e.published_per_saga, e.deliveries_per_saga, e.consumers
        );
    }
}

/// An atomic commit's counted costs next to its formulas, and the lock-hold times.
fn print_commit(c: &CommitCosts) {
    let (f, w) = (&c.formulas, &c.forced_writes);
    println!(
        "{:>14} messages/txn counted: coordinator {:.2}, participants {:.2}   formula (N={}): \
         3N = {} to the outcome, 4N = {} with the acks; capability checks {:.3}",
        "",
        c.messages_at_coordinator,
        c.messages_at_participants,
        f.participants,
        f.messages,
        f.messages_with_acks,
        c.status_messages
    );
    println!(
        "{:>14} forced writes/txn counted: {:.2} = COMMIT coordinator {:.2} + COMMIT \
         participants {:.2} + PREPARE {:.2} + COMMIT PREPARED {:.2}   formula 2N+2 = {} (2 + 0 + \
         N + N)",
        "",
        w.total,
        w.coordinator_commits,
        w.participant_commits,
        w.prepares,
        w.commit_prepared,
        f.forced_writes
    );
    let holds: Vec<String> = c
        .lock_hold
        .iter()
        .map(|(p, l)| format!("{p} {:.2}/{:.2}", l.p50_ms, l.p99_ms))
        .collect();
    println!(
        "{:>14} lock hold p50/p99 ms: {}",
        "",
        if holds.is_empty() {
            "-".to_string()
        } else {
            holds.join(", ")
        }
    );
}
