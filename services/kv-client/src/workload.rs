//! Workloads that drive a store with many concurrent clients and record what happened.
//!
//! - [`list_append`]: Elle's list-append: each transaction reads and appends (read the JSON
//!   list for update, push a globally unique value, write it back) on a few keys; every attempt is
//!   recorded in a [`History`] with its result (ok / fail / unknown) and is **not** retried, so
//!   the history holds exactly what each attempt saw. A final read of every key ([`final_read`])
//!   ends the run.
//! - [`bank`]: transfers between accounts spread over the shards, plus read-all transactions
//!   that check the total; the total must never change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::client::{Client, Error, Txn};
use crate::history::{History, Mop, Op, OpResult};

/// Size of a list-append run.
#[derive(Debug, Clone)]
pub struct ListAppend {
    /// Concurrent clients.
    pub clients: usize,
    /// Transaction attempts in all.
    pub txns: usize,
    /// Keys `"{prefix}{0..keys}"`; few keys make conflicts (and anomalies, if any) likely.
    pub keys: usize,
    /// Micro-operations per transaction: 1..=max.
    pub max_mops: usize,
    pub prefix: String,
    /// Keep going (past `txns`) until this much time has passed.
    pub min_duration: Duration,
}

fn decode_list(value: Option<&str>) -> Result<Vec<u64>, Error> {
    match value {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::User(format!("not a list-append value: {s:?}: {e}"))),
    }
}

async fn run_mops(txn: &Txn, mops: &mut [Mop]) -> Result<(), Error> {
    for mop in mops.iter_mut() {
        match mop {
            Mop::Read { key, value } => {
                let v = txn.read(key).await?;
                *value = Some(decode_list(v.as_deref())?);
            }
            Mop::Append { key, value } => {
                let mut list = decode_list(txn.read_for_update(key).await?.as_deref())?;
                list.push(*value);
                let encoded =
                    serde_json::to_string(&list).map_err(|e| Error::User(e.to_string()))?;
                txn.write(key, &encoded).await?;
            }
        }
    }
    txn.commit().await
}

/// Run one recorded attempt of `mops`.
pub async fn attempt(
    client: &Client,
    history: &History,
    process: usize,
    mut mops: Vec<Mop>,
) -> OpResult {
    let invoke_us = history.now_us();
    let txn = client.begin();
    let outcome = run_mops(&txn, &mut mops).await;
    let (result, error) = match outcome {
        Ok(()) => (OpResult::Ok, None),
        Err(e) => {
            txn.abort().await;
            let result = if matches!(e, Error::Unknown(_)) {
                OpResult::Info
            } else {
                OpResult::Fail
            };
            (result, Some(e.to_string()))
        }
    };
    if result != OpResult::Ok {
        for mop in &mut mops {
            if let Mop::Read { value, .. } = mop {
                *value = None;
            }
        }
    }
    history.push(Op {
        index: 0,
        process,
        invoke_us,
        complete_us: history.now_us(),
        mops,
        result,
        error,
    });
    result
}

fn random_mops(cfg: &ListAppend, next_value: &AtomicU64) -> Vec<Mop> {
    let mut rng = rand::rng();
    let n = rng.random_range(1..=cfg.max_mops.max(1));
    (0..n)
        .map(|_| {
            let key = format!("{}{}", cfg.prefix, rng.random_range(0..cfg.keys.max(1)));
            if rng.random_bool(0.5) {
                Mop::Read { key, value: None }
            } else {
                Mop::Append {
                    key,
                    value: next_value.fetch_add(1, Ordering::Relaxed),
                }
            }
        })
        .collect()
}

/// Run a list-append workload into `history` (without the final read: call [`final_read`]
/// once every process is back up).
pub async fn list_append(client: &Client, cfg: &ListAppend, history: &Arc<History>) {
    let next_value = Arc::new(AtomicU64::new(1));
    let started = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for process in 0..cfg.clients {
        let (client, cfg, history) = (client.clone(), cfg.clone(), history.clone());
        let (next_value, started) = (next_value.clone(), started.clone());
        let begin = std::time::Instant::now();
        tasks.push(tokio::spawn(async move {
            while started.fetch_add(1, Ordering::Relaxed) < cfg.txns
                || begin.elapsed() < cfg.min_duration
            {
                let mops = random_mops(&cfg, &next_value);
                attempt(&client, &history, process, mops).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Read every key in one transaction until it commits (the store may still be recovering).
pub async fn final_read(
    client: &Client,
    history: &History,
    process: usize,
    prefix: &str,
    keys: usize,
) {
    for _ in 0..600 {
        let mops = (0..keys)
            .map(|k| Mop::Read {
                key: format!("{prefix}{k}"),
                value: None,
            })
            .collect();
        if attempt(client, history, process, mops).await == OpResult::Ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Size of a bank run.
#[derive(Debug, Clone)]
pub struct Bank {
    pub clients: usize,
    pub txns: usize,
    pub accounts: usize,
    pub initial: i64,
    pub prefix: String,
}

/// What a bank run saw.
#[derive(Debug, Clone, Default)]
pub struct BankReport {
    pub transfers_ok: usize,
    pub transfers_failed: usize,
    pub transfers_unknown: usize,
    pub reads_ok: usize,
    /// Totals of read-all transactions that differed from the expected total.
    pub wrong_totals: Vec<i64>,
    /// The total read after the run (with every process up).
    pub final_total: Option<i64>,
}

impl Bank {
    pub fn total(&self) -> i64 {
        self.initial * i64::try_from(self.accounts).unwrap_or(0)
    }

    fn account(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Write every account's initial balance in one transaction.
    pub async fn setup(&self, client: &Client) -> Result<(), Error> {
        client
            .transaction(|t| async move {
                for i in 0..self.accounts {
                    t.write(&self.account(i), &self.initial.to_string()).await?;
                }
                Ok(())
            })
            .await
    }

    /// The sum of every balance, read in one transaction.
    pub async fn read_total(&self, client: &Client) -> Result<i64, Error> {
        client
            .transaction(|t| async move {
                let mut sum = 0;
                for i in 0..self.accounts {
                    sum += balance(&t, &self.account(i), false).await?;
                }
                Ok(sum)
            })
            .await
    }

    async fn transfer(
        &self,
        client: &Client,
        from: usize,
        to: usize,
        amount: i64,
    ) -> Result<(), Error> {
        client
            .transaction(|t| async move {
                let (a, b) = (self.account(from), self.account(to));
                let x = balance(&t, &a, true).await?;
                let y = balance(&t, &b, true).await?;
                if x >= amount {
                    t.write(&a, &(x - amount).to_string()).await?;
                    t.write(&b, &(y + amount).to_string()).await?;
                }
                Ok(())
            })
            .await
    }

    /// Run the transfers and total checks with `clients` concurrent clients.
    pub async fn run(&self, client: &Client) -> BankReport {
        let report = Arc::new(std::sync::Mutex::new(BankReport::default()));
        let started = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..self.clients {
            let (bank, client, report, started) = (
                self.clone(),
                client.clone(),
                report.clone(),
                started.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while started.fetch_add(1, Ordering::Relaxed) < bank.txns {
                    bank.one(&client, &report).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut out = report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for _ in 0..600 {
            if let Ok(total) = self.read_total(client).await {
                out.final_total = Some(total);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    }

    async fn one(&self, client: &Client, report: &std::sync::Mutex<BankReport>) {
        let (from, to, amount, check) = {
            let mut rng = rand::rng();
            let from = rng.random_range(0..self.accounts);
            let to = (from + rng.random_range(1..self.accounts)) % self.accounts;
            (from, to, rng.random_range(1..=5), rng.random_bool(0.2))
        };
        if check {
            let total = self.read_total(client).await;
            let mut r = report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Ok(total) = total {
                r.reads_ok += 1;
                if total != self.total() {
                    r.wrong_totals.push(total);
                }
            }
            return;
        }
        let result = self.transfer(client, from, to, amount).await;
        let mut r = report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => r.transfers_ok += 1,
            Err(Error::Unknown(_)) => r.transfers_unknown += 1,
            Err(_) => r.transfers_failed += 1,
        }
    }
}

async fn balance(t: &Txn, key: &str, for_update: bool) -> Result<i64, Error> {
    let v = if for_update {
        t.read_for_update(key).await?
    } else {
        t.read(key).await?
    };
    v.as_deref()
        .unwrap_or("0")
        .parse()
        .map_err(|e| Error::User(format!("balance of {key} is not a number: {e}")))
}
