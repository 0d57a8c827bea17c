//! What a run cost, from outside the loop: the processes' own transaction, prepared-transaction
//! and message counters and memory (`GET /stats`), CPU time of every process and Postgres backend (`/proc`),
//! `pg_stat_database.xact_commit`, the machine and the server's settings.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::target::Target;
use tandem_kit::stats::DbCounts;

#[derive(Debug, Clone, Default)]
pub struct Counted {
    pub database: String,
    /// The component's counters for its database (`tandem_kit::stats`).
    pub counts: DbCounts,
    pub peak_rss_kib: Option<u64>,
    pub cpu_ms: Option<u64>,
    /// Requests the process served, by `METHOD route` (`tandem_kit::stats::exchanges`).
    pub exchanges: BTreeMap<String, u64>,
    /// Requests it started by message delays on their critical path
    /// (`tandem_kit::stats::critical_paths`).
    pub critical_paths: BTreeMap<u32, u64>,
    /// The same for paths where a message was lost or a timer fired
    /// (`tandem_kit::stats::critical_paths_disturbed`).
    pub critical_paths_disturbed: BTreeMap<u32, u64>,
}

/// Messages of one kind per operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MessageRate {
    pub sent: f64,
    pub received: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub by_component: BTreeMap<String, Counted>,
    /// CPU ms of each Postgres backend (pid) serving each database.
    backends: BTreeMap<String, BTreeMap<i32, u64>>,
    /// This process (the clients).
    pub bench_cpu_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DbTransactions {
    pub database: String,
    /// CPU ms per operation of the component's process (in-process stack: the whole process).
    pub process_cpu_ms_per_saga: Option<f64>,
    /// CPU ms per operation of the Postgres backends serving this database.
    pub postgres_cpu_ms_per_saga: f64,
    /// Write transactions per operation, counted by the process (a batch counts 1/k each).
    pub writes_per_saga: f64,
    pub reads_per_saga: f64,
    /// `pg_stat_database.xact_commit` delta per operation (all committed transactions).
    pub pg_xact_commit_per_saga: Option<f64>,
    /// `PREPARE TRANSACTION`s per operation.
    pub prepared_per_saga: f64,
    /// `COMMIT PREPARED`s per operation (included in the writes).
    pub commit_prepared_per_saga: f64,
    /// `ROLLBACK PREPARED`s per operation (included in the writes).
    pub rollback_prepared_per_saga: f64,
    /// Durable commit points per operation: `COMMIT`, `PREPARE TRANSACTION`,
    /// `COMMIT PREPARED`.
    pub forced_writes_per_saga: f64,
    /// Messages per operation by kind, as this component counted them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub messages: BTreeMap<String, MessageRate>,
}

/// `b - a` per operation, when both are known.
fn per_op(a: Option<u64>, b: Option<u64>, n: f64) -> Option<f64> {
    Some(b?.saturating_sub(a?) as f64 / n)
}

impl Snapshot {
    /// CPU ms the backends of `db` used between `self` and `later` (backends that appeared in
    /// between count in full).
    fn backend_cpu_ms(&self, later: &Snapshot, db: &str) -> u64 {
        let before = self.backends.get(db);
        later.backends.get(db).map_or(0, |now| {
            now.iter()
                .map(|(pid, ms)| {
                    ms.saturating_sub(before.and_then(|b| b.get(pid)).copied().unwrap_or(0))
                })
                .sum()
        })
    }

    /// Per component, what `n` operations cost between `self` and `later` (`x0`, `x1`: the
    /// commit counters before and after, if read).
    pub fn transactions(
        &self,
        later: &Snapshot,
        x0: &BTreeMap<String, i64>,
        x1: Option<&BTreeMap<String, i64>>,
        n: f64,
    ) -> BTreeMap<String, DbTransactions> {
        let mut out = BTreeMap::new();
        for (comp, b) in &later.by_component {
            let Some(a) = self.by_component.get(comp) else {
                continue;
            };
            let db = b.database.clone();
            let pg = x1.and_then(|x1| Some((x1.get(&db)? - x0.get(&db)?) as f64 / n));
            let (ca, cb) = (&a.counts, &b.counts);
            let d = |f: fn(&DbCounts) -> u64| f(cb).saturating_sub(f(ca)) as f64 / n;
            out.insert(
                comp.clone(),
                DbTransactions {
                    process_cpu_ms_per_saga: per_op(a.cpu_ms, b.cpu_ms, n),
                    postgres_cpu_ms_per_saga: self.backend_cpu_ms(later, &db) as f64 / n,
                    database: db,
                    writes_per_saga: d(|c| c.writes),
                    reads_per_saga: d(|c| c.reads),
                    pg_xact_commit_per_saga: pg,
                    prepared_per_saga: d(|c| c.prepared),
                    commit_prepared_per_saga: d(|c| c.commit_prepared),
                    rollback_prepared_per_saga: d(|c| c.rollback_prepared),
                    forced_writes_per_saga: d(|c| {
                        (c.writes + c.prepared).saturating_sub(c.rollback_prepared)
                    }),
                    messages: message_rates(ca, cb, n),
                },
            );
        }
        out
    }

    /// Requests served per operation by `METHOD route`, every component together (each is two
    /// messages: the request and its response).
    pub fn exchanges_per_op(&self, later: &Snapshot, n: f64) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for (comp, b) in &later.by_component {
            let a = self.by_component.get(comp);
            for (route, after) in &b.exchanges {
                let before = a.and_then(|a| a.exchanges.get(route)).copied().unwrap_or(0);
                if *after > before {
                    *out.entry(route.clone()).or_default() += (after - before) as f64 / n;
                }
            }
        }
        out
    }

    /// Transactions that ended between the two readings by the message delays on their
    /// critical path (hops → how many), every component together: the failure-free ones, and
    /// apart those where a message was lost or a timer fired.
    pub fn critical_paths(&self, later: &Snapshot) -> (BTreeMap<u32, u64>, BTreeMap<u32, u64>) {
        (
            self.paths_since(later, |c| &c.critical_paths),
            self.paths_since(later, |c| &c.critical_paths_disturbed),
        )
    }

    fn paths_since(
        &self,
        later: &Snapshot,
        paths: fn(&Counted) -> &BTreeMap<u32, u64>,
    ) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for (comp, b) in &later.by_component {
            let a = self.by_component.get(comp);
            for (hops, after) in paths(b) {
                let before = a.and_then(|a| paths(a).get(hops)).copied().unwrap_or(0);
                if *after > before {
                    *out.entry(*hops).or_default() += after - before;
                }
            }
        }
        out
    }

    /// CPU ms per operation of this process (the clients).
    pub fn client_cpu_ms(&self, later: &Snapshot, n: f64) -> Option<f64> {
        per_op(self.bench_cpu_ms, later.bench_cpu_ms, n)
    }
}

/// Messages per operation by kind between two readings of one component's counters.
fn message_rates(a: &DbCounts, b: &DbCounts, n: f64) -> BTreeMap<String, MessageRate> {
    b.messages
        .iter()
        .map(|(kind, m)| {
            let before = a.messages.get(kind).copied().unwrap_or_default();
            let rate = MessageRate {
                sent: m.sent.saturating_sub(before.sent) as f64 / n,
                received: m.received.saturating_sub(before.received) as f64 / n,
            };
            (kind.clone(), rate)
        })
        .collect()
}

/// The counters one component reports at `GET /stats`: its own database's (in one process, the
/// in-process stack, picked by name).
fn counted(c: &str, v: &Value) -> Counted {
    let dbs = v["transactions"].as_object().cloned().unwrap_or_default();
    let pick = dbs
        .iter()
        .find(|(name, _)| name.ends_with(c))
        .or_else(|| (dbs.len() == 1).then(|| dbs.iter().next()).flatten());
    let (database, counts) = match pick {
        Some((name, x)) => (
            name.clone(),
            serde_json::from_value(x.clone()).unwrap_or_default(),
        ),
        None => (String::new(), DbCounts::default()),
    };
    Counted {
        database,
        counts,
        peak_rss_kib: v["peak_rss_kib"].as_u64(),
        // Read by pid: in-process components report the same process.
        cpu_ms: v["pid"]
            .as_u64()
            .and_then(|pid| tandem_kit::stats::cpu_ms(pid as u32)),
        exchanges: serde_json::from_value(v["exchanges"].clone()).unwrap_or_default(),
        critical_paths: serde_json::from_value(v["critical_paths"].clone()).unwrap_or_default(),
        critical_paths_disturbed: serde_json::from_value(v["critical_paths_disturbed"].clone())
            .unwrap_or_default(),
    }
}

pub async fn snapshot(t: &Target, server: &str) -> anyhow::Result<Snapshot> {
    let mut s = Snapshot {
        bench_cpu_ms: tandem_kit::stats::cpu_ms(std::process::id()),
        ..Snapshot::default()
    };
    let mut conn = tandem_kit::db::admin_connection(server).await?;
    let backends: Vec<(i32, String)> = sqlx::query_as(
        "SELECT pid, datname::text FROM pg_stat_activity WHERE datname IS NOT NULL AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await?;
    for (pid, db) in backends {
        if let Some(ms) = tandem_kit::stats::cpu_ms(pid as u32) {
            s.backends.entry(db).or_default().insert(pid, ms);
        }
    }
    for c in t.components() {
        let v = t.get_json(c, "/stats").await?;
        let mut counted = counted(c, &v);
        if counted.database.is_empty()
            && let Some(layout) = &t.layout
        {
            counted.database = layout.database(c);
        }
        s.by_component.insert(c.to_string(), counted);
    }
    Ok(s)
}

pub async fn xact_commits(server: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut conn = tandem_kit::db::admin_connection(server).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT datname::text, xact_commit FROM pg_stat_database WHERE datname IS NOT NULL",
    )
    .fetch_all(&mut conn)
    .await?;
    Ok(rows.into_iter().collect())
}

pub fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({ "cores": cores, "mem_gib": mem_kib.map(|k| k as f64 / 1048576.0), "loadavg_at_start": load.trim() })
}

pub async fn postgres_settings(server: &str) -> anyhow::Result<Value> {
    let mut conn = tandem_kit::db::admin_connection(server).await?;
    let mut m = serde_json::Map::new();
    for s in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "max_connections",
        "wal_sync_method",
        "commit_delay",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {s}")))
            .fetch_one(&mut conn)
            .await?;
        m.insert(s.to_string(), Value::String(v));
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::COMPONENTS;
    use tandem_kit::stats::Messages;

    #[test]
    fn picks_the_components_own_database_from_its_stats() {
        let v = json!({
            "transactions": {
                "b_inventory": {"writes": 3, "reads": 4},
                "b_payment": {"writes": 5, "reads": 6}
            },
            "peak_rss_kib": 7
        });
        let c = counted("payment", &v);
        assert_eq!(
            (c.database.as_str(), c.counts.writes, c.counts.reads),
            ("b_payment", 5, 6)
        );
        assert_eq!(c.peak_rss_kib, Some(7));
        // One database only (a separate process): that one, whatever its name.
        let one = json!({"transactions": {"elsewhere": {"writes": 1, "reads": 2}}});
        assert_eq!(counted("shipping", &one).database, "elsewhere");
        assert_eq!(counted("shipping", &json!({})).database, "");
    }

    #[test]
    fn costs_are_per_operation() {
        let mut a = Snapshot::default();
        let mut b = Snapshot::default();
        for c in COMPONENTS {
            let counts = |writes, reads, prepared, sent| {
                let m = Messages { sent, received: 0 };
                DbCounts {
                    writes,
                    reads,
                    prepared,
                    commit_prepared: prepared / 2,
                    rollback_prepared: prepared / 4,
                    messages: BTreeMap::from([("prepare".to_string(), m)]),
                }
            };
            let counted = |counts, cpu| Counted {
                database: format!("d_{c}"),
                counts,
                peak_rss_kib: None,
                cpu_ms: Some(cpu),
                exchanges: BTreeMap::new(),
                critical_paths: BTreeMap::new(),
                critical_paths_disturbed: BTreeMap::new(),
            };
            a.by_component
                .insert(c.into(), counted(counts(10, 0, 0, 0), 100));
            b.by_component
                .insert(c.into(), counted(counts(30, 10, 8, 60), 140));
        }
        a.backends
            .insert("d_payment".into(), BTreeMap::from([(1, 50)]));
        b.backends
            .insert("d_payment".into(), BTreeMap::from([(1, 70), (2, 10)]));
        let x0 = BTreeMap::from([("d_payment".to_string(), 100)]);
        let x1 = BTreeMap::from([("d_payment".to_string(), 160)]);
        let t = a.transactions(&b, &x0, Some(&x1), 20.0);
        let p = &t["payment"];
        assert_eq!((p.writes_per_saga, p.reads_per_saga), (1.0, 0.5));
        assert_eq!(p.process_cpu_ms_per_saga, Some(2.0));
        assert_eq!(p.postgres_cpu_ms_per_saga, 1.5);
        assert_eq!(p.pg_xact_commit_per_saga, Some(3.0));
        assert_eq!(t["inventory"].pg_xact_commit_per_saga, None);
        // 8 prepared, 4 committed and 2 rolled back (both among the writes) over 20 operations:
        // forced writes are the 20 writes and 8 prepares, less the 2 rollbacks.
        assert_eq!(
            (
                p.prepared_per_saga,
                p.commit_prepared_per_saga,
                p.rollback_prepared_per_saga
            ),
            (0.4, 0.2, 0.1)
        );
        assert_eq!(p.forced_writes_per_saga, 1.3);
        assert_eq!(
            p.messages["prepare"],
            MessageRate {
                sent: 3.0,
                received: 0.0
            }
        );
    }
}
