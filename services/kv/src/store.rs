//! Durable storage of one process, on [redb](https://docs.rs/redb) (an embedded, copy-on-write
//! B-tree with ACID write transactions).
//!
//! redb is used as a durable map only: isolation is Tandem's (the lock table in
//! [`crate::locks`]); each redb write transaction here applies an already-decided change.
//! **Durability: every data change and every forced protocol record commits with
//! [`Durability::Immediate`]** — redb fsyncs before `commit` returns — through `Store::write`
//! ([`DURABILITY`] names the mode; `tests/durability.rs` checks with strace that each
//! acknowledged commit was fsynced). The protocols' lazy records (a participant's `Aborted`, the
//! coordinator's `End`) are removals committed with `Durability::None`.
//!
//! Tables:
//! - `data`: key → value, the committed state of a shard;
//! - `prepared`: transaction → [`PreparedRecord`] (the participant's forced `Prepared`
//!   record: its write set, its place among the participants);
//! - `decided`: transaction → [`Decided`] (a participant's forced `Committed` record, also
//!   written by one-phase commits so a retried commit learns its outcome);
//! - `coordinator`: transaction → participants, the coordinator's forced `Commit` record,
//!   removed when every participant acknowledged (the `End` record).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// The durability of every write transaction.
pub const DURABILITY: Durability = Durability::Immediate;

/// [`DURABILITY`] as `GET /status` reports it (`"immediate"`).
pub fn durability() -> String {
    format!("{DURABILITY:?}").to_lowercase()
}

const DATA: TableDefinition<&str, &str> = TableDefinition::new("data");
/// A table of protocol records: transaction id → JSON.
type Records = TableDefinition<'static, u128, &'static [u8]>;

const PREPARED: Records = TableDefinition::new("prepared");
const DECIDED: Records = TableDefinition::new("decided");
const COORDINATOR: Records = TableDefinition::new("coordinator");

/// A buffered write: `None` deletes the key.
pub type Writes = BTreeMap<String, Option<String>>;

/// A participant's durable YES vote: enough to rebuild its locks and finish it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRecord {
    pub id: Uuid,
    pub priority: u64,
    /// This shard's index in the 2PC core (its position in `participants`).
    pub index: u8,
    /// Shard indexes, sorted; `participants[0]` initiated the commit.
    pub participants: Vec<u16>,
    pub writes: Writes,
}

/// A participant's durable outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    pub index: u8,
    pub committed: bool,
}

/// One redb database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durable_commits", &self.durable_commits())
            .finish()
    }
}

impl Store {
    /// Open (or create) `dir/kv.redb`, creating the tables.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("kv.redb")).map_err(redb::Error::from)?;
        let store = Store {
            db: Arc::new(db),
            commits: Arc::new(AtomicU64::new(0)),
        };
        store.write(|w| {
            w.open_table(DATA)?;
            w.open_table(PREPARED)?;
            w.open_table(DECIDED)?;
            w.open_table(COORDINATOR)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Durable write transactions committed since the process started.
    pub fn durable_commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Run `f` in one write transaction and commit it with [`DURABILITY`]: when this returns
    /// `Ok`, the change is on disk.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, Error> {
        let mut w = self.db.begin_write().map_err(redb::Error::from)?;
        w.set_durability(DURABILITY).map_err(redb::Error::from)?;
        let out = f(&w)?;
        w.commit().map_err(redb::Error::from)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// A protocol's lazy write (`Action::Write`): committed without fsync
    /// (`Durability::None`), made durable by the next forced write — or lost in a crash, which
    /// the protocols tolerate (a lost `Aborted` or `End` record only causes a query or a resend).
    fn write_lazy(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), Error> {
        let mut w = self.db.begin_write().map_err(redb::Error::from)?;
        w.set_durability(Durability::None)
            .map_err(redb::Error::from)?;
        f(&w)?;
        w.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// The committed value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let r = self.db.begin_read().map_err(redb::Error::from)?;
        let t = r.open_table(DATA).map_err(redb::Error::from)?;
        let v = t.get(key).map_err(redb::Error::from)?;
        Ok(v.map(|g| g.value().to_string()))
    }

    /// One-phase commit: apply `writes` and remember the outcome, in one durable transaction.
    pub fn commit_one_phase(&self, id: Uuid, writes: &Writes) -> Result<(), Error> {
        let decided = encode(&Decided {
            index: 0,
            committed: true,
        })?;
        self.write(|w| {
            apply(w, writes)?;
            w.open_table(DECIDED)?
                .insert(id.as_u128(), decided.as_slice())?;
            Ok(())
        })
    }

    /// Force the participant's `Prepared` record.
    pub fn put_prepared(&self, record: &PreparedRecord) -> Result<(), Error> {
        self.put_record(PREPARED, record.id, record)
    }

    /// Force the participant's `Committed` record: apply the prepared writes, drop the
    /// prepared record and remember the outcome, atomically.
    pub fn commit_prepared(&self, id: Uuid) -> Result<(), Error> {
        self.write(|w| {
            let mut prepared = w.open_table(PREPARED)?;
            let record = prepared
                .remove(id.as_u128())?
                .map(|g| decode::<PreparedRecord>(g.value()));
            let index = match record {
                Some(Ok(r)) => {
                    apply(w, &r.writes)?;
                    r.index
                }
                Some(Err(e)) => return Err(redb::Error::Corrupted(e.to_string())),
                // Already committed (a duplicate): keep the existing decided record.
                None => return Ok(()),
            };
            let decided = encode(&Decided {
                index,
                committed: true,
            })
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            w.open_table(DECIDED)?
                .insert(id.as_u128(), decided.as_slice())?;
            Ok(())
        })
    }

    /// The participant's `Aborted` record (lazy): forget the prepared write set.
    pub fn abort_prepared(&self, id: Uuid) -> Result<(), Error> {
        self.remove_lazy(PREPARED, id)
    }

    /// Every prepared record (recovery).
    pub fn prepared(&self) -> Result<Vec<PreparedRecord>, Error> {
        Ok(self
            .records(PREPARED)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    pub fn prepared_one(&self, id: Uuid) -> Result<Option<PreparedRecord>, Error> {
        self.record(PREPARED, id)
    }

    /// The durable outcome of a transaction this shard committed.
    pub fn decided(&self, id: Uuid) -> Result<Option<Decided>, Error> {
        self.record(DECIDED, id)
    }

    /// Coordinator: force the `Commit` record (with the participants, to resend the outcome).
    pub fn put_commit(&self, id: Uuid, participants: &[u16]) -> Result<(), Error> {
        self.put_record(COORDINATOR, id, &participants)
    }

    /// Coordinator: the `End` record (lazy) — every participant acknowledged, forget the
    /// transaction.
    pub fn end(&self, id: Uuid) -> Result<(), Error> {
        self.remove_lazy(COORDINATOR, id)
    }

    /// Coordinator: committed transactions not yet acknowledged by every participant.
    pub fn commits(&self) -> Result<Vec<(Uuid, Vec<u16>)>, Error> {
        self.records(COORDINATOR)
    }

    /// Force `value` as the record of transaction `id` in `table`.
    fn put_record<T: Serialize>(&self, table: Records, id: Uuid, value: &T) -> Result<(), Error> {
        let bytes = encode(value)?;
        self.write(|w| {
            w.open_table(table)?
                .insert(id.as_u128(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Remove the record of `id` from `table`, lazily (see [`Store::write_lazy`]).
    fn remove_lazy(&self, table: Records, id: Uuid) -> Result<(), Error> {
        self.write_lazy(|w| {
            w.open_table(table)?.remove(id.as_u128())?;
            Ok(())
        })
    }

    /// The record of `id` in `table`.
    fn record<T: DeserializeOwned>(&self, table: Records, id: Uuid) -> Result<Option<T>, Error> {
        let r = self.db.begin_read().map_err(redb::Error::from)?;
        let t = r.open_table(table).map_err(redb::Error::from)?;
        let v = t.get(id.as_u128()).map_err(redb::Error::from)?;
        v.map(|g| decode(g.value())).transpose()
    }

    /// Every record in `table`, in transaction id order.
    fn records<T: DeserializeOwned>(&self, table: Records) -> Result<Vec<(Uuid, T)>, Error> {
        let r = self.db.begin_read().map_err(redb::Error::from)?;
        let t = r.open_table(table).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(redb::Error::from)? {
            let (k, v) = item.map_err(redb::Error::from)?;
            out.push((Uuid::from_u128(k.value()), decode(v.value())?));
        }
        Ok(out)
    }

    /// The engine's raw commit rate: `n` durable single-key write transactions into a fresh
    /// database in `dir`, one after another. Returns commits per second.
    pub fn raw_commit_rate(dir: &Path, n: u32) -> Result<f64, Error> {
        let store = Store::open(dir)?;
        let start = Instant::now();
        for i in 0..n {
            let key = format!("raw-{i}");
            store.write(|w| {
                w.open_table(DATA)?.insert(key.as_str(), "v")?;
                Ok(())
            })?;
        }
        Ok(f64::from(n) / start.elapsed().as_secs_f64())
    }
}

fn apply(w: &redb::WriteTransaction, writes: &Writes) -> Result<(), redb::Error> {
    let mut data = w.open_table(DATA)?;
    for (k, v) in writes {
        match v {
            Some(v) => {
                data.insert(k.as_str(), v.as_str())?;
            }
            None => {
                data.remove(k.as_str())?;
            }
        }
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-kv-store-{name}-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn prepared_survives_reopen_and_commit_applies_it_once() {
        let dir = tempdir("prepared");
        let id = Uuid::now_v7();
        let record = PreparedRecord {
            id,
            priority: 7,
            index: 1,
            participants: vec![0, 2],
            writes: Writes::from([("a".into(), Some("1".into())), ("b".into(), None)]),
        };
        {
            let s = Store::open(&dir).unwrap();
            s.commit_one_phase(
                Uuid::now_v7(),
                &Writes::from([("b".into(), Some("old".into()))]),
            )
            .unwrap();
            s.put_prepared(&record).unwrap();
            assert_eq!(s.get("a").unwrap(), None, "prepared writes are not visible");
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.prepared().unwrap(), vec![record]);
        s.commit_prepared(id).unwrap();
        s.commit_prepared(id).unwrap();
        assert_eq!(s.get("a").unwrap().as_deref(), Some("1"));
        assert_eq!(s.get("b").unwrap(), None);
        assert!(s.prepared().unwrap().is_empty());
        assert_eq!(
            s.decided(id).unwrap(),
            Some(Decided {
                index: 1,
                committed: true
            })
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn coordinator_log_keeps_commits_until_end() {
        let dir = tempdir("coord");
        let s = Store::open(&dir).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        s.put_commit(a, &[0, 1]).unwrap();
        s.put_commit(b, &[1, 2]).unwrap();
        s.end(a).unwrap();
        assert_eq!(s.commits().unwrap(), vec![(b, vec![1, 2])]);
        assert_eq!(s.durable_commits(), 3, "open + 2 commits; the end is lazy");
        std::fs::remove_dir_all(dir).ok();
    }
}
