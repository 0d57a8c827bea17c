//! Process counters for benchmarks and operators: the transactions this process committed, per
//! database (writes and reads apart), and its memory. Every server answers `GET /stats` with them
//! (mounted by [`crate::http::finish`]).
//!
//! Counting is one atomic add per transaction; the map is keyed by database name so that several
//! components in one process (the in-process stack, tests) keep their figures apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use axum::Json;
use serde_json::{Value, json};
use sqlx::PgPool;

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    reads: AtomicU64,
}

static BY_DATABASE: LazyLock<Mutex<BTreeMap<String, Arc<Counters>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn counters(pool: &PgPool) -> Arc<Counters> {
    let opts = pool.connect_options();
    let db = opts.get_database().unwrap_or("postgres");
    let mut map = BY_DATABASE.lock().expect("stats lock");
    if let Some(c) = map.get(db) {
        return c.clone();
    }
    map.entry(db.to_string()).or_default().clone()
}

/// A transaction that may write was committed on `pool` (a batch of k sagas' writes counts 1).
pub fn write_committed(pool: &PgPool) {
    counters(pool).writes.fetch_add(1, Ordering::Relaxed);
}

/// A read-only transaction (an autocommit `SELECT`) ran on `pool`.
pub fn read_committed(pool: &PgPool) {
    counters(pool).reads.fetch_add(1, Ordering::Relaxed);
}

/// `(database, writes, reads)` so far.
pub fn transactions() -> Vec<(String, u64, u64)> {
    BY_DATABASE
        .lock()
        .expect("stats lock")
        .iter()
        .map(|(db, c)| {
            (
                db.clone(),
                c.writes.load(Ordering::Relaxed),
                c.reads.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// `VmRSS` and `VmHWM` (peak resident set) of this process in KiB, from `/proc/self/status`.
pub fn rss_kib() -> (Option<u64>, Option<u64>) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system, all threads) of process `pid` in milliseconds, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms: Linux's USER_HZ is 100).
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * 10)
}

/// `GET /stats`.
pub async fn handler() -> Json<Value> {
    let (rss, peak) = rss_kib();
    let dbs: serde_json::Map<String, Value> = transactions()
        .into_iter()
        .map(|(db, w, r)| (db, json!({ "writes": w, "reads": r })))
        .collect();
    Json(json!({
        "pid": std::process::id(),
        "transactions": dbs,
        "rss_kib": rss,
        "peak_rss_kib": peak,
        "cpu_ms": cpu_ms(std::process::id()),
    }))
}
