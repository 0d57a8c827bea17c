//! Process counters for benchmarks and operators: the transactions this process committed, per
//! database (writes and reads apart), the prepared transactions it prepared and finished, the
//! 2PC messages it sent and received, and its memory. Every server answers `GET /stats` with
//! them (mounted by [`crate::http::finish`]).
//!
//! Counting is one atomic add per transaction; the map is keyed by database name so that several
//! components in one process (the in-process stack, tests) keep their figures apart.
//!
//! What counts as what (docs/benchmarks.md, "2PC vs saga"):
//! - `writes`: transactions that may write and ended in a commit, as `pg_stat_database`
//!   counts them: an ordinary `COMMIT`, and the statement transactions of `COMMIT PREPARED` and
//!   `ROLLBACK PREPARED` (both also counted apart);
//! - `prepared`: `PREPARE TRANSACTION`s that succeeded (not a commit for Postgres' counters);
//! - forced writes (each durable commit point) are then `writes + prepared - rollback_prepared`;
//! - `messages`: per kind, sent and received; a request and its response are two messages
//!   (docs/commit-protocols.md, "What one message is over HTTP");
//! - `exchanges`: requests this process served, by `METHOD route-template`, for every protocol
//!   alike (counted by the shared server middleware; process-wide, not per database): each is
//!   two messages. `tandem commit compare --live` sums them over every process;
//! - `critical_paths`: requests this process started (a client's, or a background run's) by the
//!   message delays on their longest chain, measured by the hop count every protocol message
//!   carries ([`crate::hop`]): hops → how many; `critical_paths_disturbed` the same for those
//!   whose path saw a lost message or a timer fire (not the failure-free path a formula counts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    reads: AtomicU64,
    prepared: AtomicU64,
    commit_prepared: AtomicU64,
    rollback_prepared: AtomicU64,
    /// kind → (sent, received)
    messages: Mutex<BTreeMap<&'static str, (u64, u64)>>,
}

/// Requests served by this process, by `METHOD route-template` (every server counts them in
/// [`crate::http::observe`]): each is two messages, the request and its response.
static EXCHANGES: LazyLock<Mutex<BTreeMap<String, u64>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// This process served a request of `method` on `route` (its route template): counted once per
/// request, whatever the protocol, so that every protocol's messages are counted the same way.
pub fn exchange(method: &axum::http::Method, route: &str) {
    let mut m = EXCHANGES.lock().expect("stats lock");
    let key = format!("{method} {route}");
    if let Some(n) = m.get_mut(&key) {
        *n += 1;
    } else {
        m.insert(key, 1);
    }
}

/// Requests served so far by `METHOD route-template` (see [`exchange`]).
pub fn exchanges() -> BTreeMap<String, u64> {
    EXCHANGES.lock().expect("stats lock").clone()
}

/// Transactions this process started (a root clock of [`crate::hop`]) by the message delays on
/// their critical path: hops → how many.
static CRITICAL_PATHS: LazyLock<Mutex<BTreeMap<u32, u64>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// The same for paths that saw a lost message or a timer fire ([`crate::hop::disturbed`]).
static CRITICAL_PATHS_DISTURBED: LazyLock<Mutex<BTreeMap<u32, u64>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// A request (or background run) this process started ended with `hops` message delays on its
/// longest chain (see [`crate::hop`]); `disturbed`: a message on it was lost or a timer fired.
pub fn critical_path(hops: u32, disturbed: bool) {
    let map = if disturbed {
        &CRITICAL_PATHS_DISTURBED
    } else {
        &CRITICAL_PATHS
    };
    *map.lock().expect("stats lock").entry(hops).or_default() += 1;
}

/// How many started requests ended with each critical-path length so far (failure-free ones).
pub fn critical_paths() -> BTreeMap<u32, u64> {
    CRITICAL_PATHS.lock().expect("stats lock").clone()
}

/// The same for the disturbed ones ([`critical_path`]).
pub fn critical_paths_disturbed() -> BTreeMap<u32, u64> {
    CRITICAL_PATHS_DISTURBED.lock().expect("stats lock").clone()
}

static BY_DATABASE: LazyLock<Mutex<BTreeMap<String, Arc<Counters>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// A database the counters are kept for, by name: a Postgres pool, or a service's
/// [`crate::store::Db`] (a SQLite one by its file).
pub trait Counted {
    fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R;
}

impl<T: Counted + ?Sized> Counted for &T {
    fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        (**self).with_name(f)
    }
}

impl Counted for PgPool {
    fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let opts = self.connect_options();
        f(opts.get_database().unwrap_or("postgres"))
    }
}

impl Counted for crate::store::Db {
    fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            crate::store::Db::Postgres(pool) => pool.with_name(f),
            crate::store::Db::Sqlite(pool) => {
                let opts = pool.connect_options();
                f(&opts.get_filename().to_string_lossy())
            }
        }
    }
}

fn counters(pool: &(impl Counted + ?Sized)) -> Arc<Counters> {
    pool.with_name(|db| {
        let mut map = BY_DATABASE.lock().expect("stats lock");
        if let Some(c) = map.get(db) {
            return c.clone();
        }
        map.entry(db.to_string()).or_default().clone()
    })
}

/// A transaction that may write was committed on `pool` (a batch of k sagas' writes counts 1).
pub fn write_committed(pool: &(impl Counted + ?Sized)) {
    counters(pool).writes.fetch_add(1, Ordering::Relaxed);
}

/// A read-only transaction (an autocommit `SELECT`) ran on `pool`.
pub fn read_committed(pool: &(impl Counted + ?Sized)) {
    counters(pool).reads.fetch_add(1, Ordering::Relaxed);
}

/// A `PREPARE TRANSACTION` succeeded on `pool`'s database.
pub fn prepared(pool: &(impl Counted + ?Sized)) {
    counters(pool).prepared.fetch_add(1, Ordering::Relaxed);
}

/// A `COMMIT PREPARED` succeeded on `pool` (also a write: its statement transaction commits).
pub fn commit_prepared(pool: &(impl Counted + ?Sized)) {
    let c = counters(pool);
    c.commit_prepared.fetch_add(1, Ordering::Relaxed);
    c.writes.fetch_add(1, Ordering::Relaxed);
}

/// A `ROLLBACK PREPARED` succeeded on `pool` (also a write, as for `pg_stat_database`).
pub fn rollback_prepared(pool: &(impl Counted + ?Sized)) {
    let c = counters(pool);
    c.rollback_prepared.fetch_add(1, Ordering::Relaxed);
    c.writes.fetch_add(1, Ordering::Relaxed);
}

fn message(pool: &(impl Counted + ?Sized), kind: &'static str, sent: bool) {
    let c = counters(pool);
    let mut m = c.messages.lock().expect("stats lock");
    let e = m.entry(kind).or_default();
    if sent {
        e.0 += 1;
    } else {
        e.1 += 1;
    }
}

/// The component of `pool`'s database sent a message of `kind` (a request, or a response).
pub fn message_sent(pool: &(impl Counted + ?Sized), kind: &'static str) {
    message(pool, kind, true);
}

/// The component of `pool`'s database received a message of `kind`.
pub fn message_received(pool: &(impl Counted + ?Sized), kind: &'static str) {
    message(pool, kind, false);
}

/// Messages of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Messages {
    pub sent: u64,
    pub received: u64,
}

/// One database's counters so far (as `GET /stats` shows them; absent fields read as 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DbCounts {
    pub writes: u64,
    pub reads: u64,
    pub prepared: u64,
    pub commit_prepared: u64,
    pub rollback_prepared: u64,
    pub messages: BTreeMap<String, Messages>,
}

/// Every database's counters so far.
pub fn by_database() -> BTreeMap<String, DbCounts> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    BY_DATABASE
        .lock()
        .expect("stats lock")
        .iter()
        .map(|(db, c)| {
            let messages = c
                .messages
                .lock()
                .expect("stats lock")
                .iter()
                .map(|(k, (sent, received))| {
                    let m = Messages {
                        sent: *sent,
                        received: *received,
                    };
                    (k.to_string(), m)
                })
                .collect();
            let counts = DbCounts {
                writes: load(&c.writes),
                reads: load(&c.reads),
                prepared: load(&c.prepared),
                commit_prepared: load(&c.commit_prepared),
                rollback_prepared: load(&c.rollback_prepared),
                messages,
            };
            (db.clone(), counts)
        })
        .collect()
}

/// `(database, writes, reads)` so far.
pub fn transactions() -> Vec<(String, u64, u64)> {
    by_database()
        .into_iter()
        .map(|(db, c)| (db, c.writes, c.reads))
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
    Json(json!({
        "pid": std::process::id(),
        "transactions": by_database(),
        "exchanges": exchanges(),
        "critical_paths": critical_paths(),
        "critical_paths_disturbed": critical_paths_disturbed(),
        "rss_kib": rss,
        "peak_rss_kib": peak,
        "cpu_ms": cpu_ms(std::process::id()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool on database `db` that never connects (the counters key on its name).
    fn pool(db: &str) -> PgPool {
        PgPool::connect_lazy(&format!("postgres://127.0.0.1:1/{db}")).expect("lazy pool")
    }

    #[tokio::test]
    async fn counts_commits_prepares_and_messages_per_database() {
        let (a, b) = (pool("stats_unit_a"), pool("stats_unit_b"));
        write_committed(&a);
        read_committed(&a);
        prepared(&a);
        prepared(&a);
        commit_prepared(&a);
        rollback_prepared(&a);
        message_received(&a, "prepare");
        message_sent(&a, "vote");
        message_received(&a, "prepare");
        message_sent(&b, "prepare");
        let all = by_database();
        let x = &all["stats_unit_a"];
        // COMMIT PREPARED and ROLLBACK PREPARED are writes too (pg_stat_database counts them).
        assert_eq!(
            (
                x.writes,
                x.reads,
                x.prepared,
                x.commit_prepared,
                x.rollback_prepared
            ),
            (3, 1, 2, 1, 1)
        );
        let m = |sent, received| Messages { sent, received };
        assert_eq!(x.messages["prepare"], m(0, 2));
        assert_eq!(x.messages["vote"], m(1, 0));
        let y = &all["stats_unit_b"];
        assert_eq!((y.writes, y.prepared), (0, 0));
        assert_eq!(y.messages["prepare"], m(1, 0));
        // The JSON of `GET /stats` carries the same figures.
        let v = serde_json::to_value(&all).unwrap();
        assert_eq!(v["stats_unit_a"]["messages"]["prepare"]["received"], 2);
        assert_eq!(v["stats_unit_a"]["commit_prepared"], 1);
        assert!(
            transactions().contains(&("stats_unit_a".to_string(), 3, 1)),
            "{:?}",
            transactions()
        );
    }
}
