//! [`Client`] and [`Txn`]: the ergonomic side of the store.
//!
//! A [`Txn`] begins lazily on each shard the first time it touches one of its keys (same id and
//! wait-die priority everywhere). [`Txn::commit`] sends one request to the first participant:
//! that shard commits alone in one phase, or, when several shards took part, initiates 2PC with
//! the coordinator and answers once it knows the outcome.
//!
//! [`Client::transaction`] runs a closure in a fresh transaction and retries it (exponential
//! backoff with jitter, same priority so it ages and eventually wins wait-die) when the store
//! aborted it; a commit whose outcome is unknown is **not** retried, it is returned as
//! [`Error::Unknown`] because running the closure again might apply it twice.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::wire::{
    BeginRequest, BeginResponse, CommitRequest, CommitResponse, KeyRequest, ReadRequest,
    ReadResponse, TxnOutcome, WriteRequest, shard_for,
};

/// What can go wrong with a transaction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A lock conflict (wait-die) or a lock wait that ran out: the transaction was aborted,
    /// retrying it may succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The transaction is definitely aborted (the store said so, or it forgot the transaction:
    /// an idle timeout, a shard restart before prepare).
    #[error("aborted: {0}")]
    Aborted(String),
    /// Commit was sent but its outcome could not be learned: it may or may not have committed.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A shard is unreachable or failed before commit; the transaction did not commit.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request is invalid (a 4xx that retrying cannot fix): the problem+json body.
    #[error("rejected ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The closure chose to abort; not retried.
    #[error("aborted by the application: {0}")]
    User(String),
}

impl Error {
    /// Whether running the transaction again may succeed (and cannot double-apply it).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict(_) | Error::Aborted(_) | Error::Unavailable(_)
        )
    }
}

struct Inner {
    http: reqwest::Client,
    shards: Vec<String>,
    max_attempts: usize,
}

/// A handle on the store: the shards' base URLs, in shard-index order. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("shards", &self.inner.shards)
            .finish()
    }
}

/// Attempts of [`Client::transaction`] before it gives up with the last error.
pub const DEFAULT_MAX_ATTEMPTS: usize = 50;
/// Commit requests sent before an outcome that stays pending is reported as unknown.
const COMMIT_TRIES: usize = 6;

impl Client {
    /// `shards[i]` is the base URL of shard `i` (`http://127.0.0.1:8091`). Sends no token: a
    /// store that runs open (see [`Client::with_token`]).
    pub fn new(shards: Vec<String>) -> Self {
        Client::build(shards, None)
    }

    /// `shards[i]` is the base URL of shard `i`; every request carries `Authorization: Bearer
    /// <token>` (a client or operator token of the store, docs/security.md).
    pub fn with_token(shards: Vec<String>, token: &str) -> Self {
        Client::build(shards, Some(token))
    }

    fn build(shards: Vec<String>, token: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token.filter(|t| !t.is_empty())
            && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
        {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap_or_default();
        let shards = shards
            .into_iter()
            .map(|s| s.trim_end_matches('/').to_string())
            .collect();
        Client {
            inner: Arc::new(Inner {
                http,
                shards,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            }),
        }
    }

    /// The same client with another retry budget for [`Client::transaction`].
    pub fn with_max_attempts(self, max_attempts: usize) -> Self {
        let inner = Inner {
            http: self.inner.http.clone(),
            shards: self.inner.shards.clone(),
            max_attempts: max_attempts.max(1),
        };
        Client {
            inner: Arc::new(inner),
        }
    }

    pub fn shard_count(&self) -> u16 {
        u16::try_from(self.inner.shards.len()).unwrap_or(u16::MAX)
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &str) -> u16 {
        shard_for(key, self.shard_count())
    }

    /// A new transaction (nothing is sent until it touches a key).
    pub fn begin(&self) -> Txn {
        Txn::new(self.clone(), now_micros())
    }

    /// Run `f` in a transaction and commit; on a retryable error (conflict, abort, a shard
    /// unavailable before commit) abort, back off and run it again, keeping the first attempt's
    /// wait-die priority. Returns `f`'s value once a commit succeeded.
    pub async fn transaction<T, F, Fut>(&self, mut f: F) -> Result<T, Error>
    where
        F: FnMut(Txn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let priority = now_micros();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(200))
            .with_jitter()
            .with_max_times(self.inner.max_attempts)
            .build();
        loop {
            let txn = Txn::new(self.clone(), priority);
            let result = match f(txn.clone()).await {
                Ok(value) => txn.commit().await.map(|()| value),
                Err(e) => {
                    txn.abort().await;
                    Err(e)
                }
            };
            match result {
                Err(e) if e.is_retryable() => match backoff.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Read one key in its own transaction.
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        self.transaction(|t| async move { t.read(key).await }).await
    }

    /// Write one key in its own transaction.
    pub async fn put(&self, key: &str, value: &str) -> Result<(), Error> {
        self.transaction(|t| async move { t.write(key, value).await })
            .await
    }

    fn url(&self, shard: u16, path: &str) -> String {
        format!("{}{path}", self.inner.shards[usize::from(shard)])
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        shard: u16,
        path: &str,
        body: &B,
    ) -> Result<R, Error> {
        let response = self
            .inner
            .http
            .post(self.url(shard, path))
            .json(body)
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("shard {shard}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<R>()
                .await
                .map_err(|e| Error::Unavailable(format!("shard {shard}: bad answer: {e}")));
        }
        let problem: serde_json::Value = response.json().await.unwrap_or_default();
        Err(problem_error(status.as_u16(), &problem))
    }
}

/// Map a problem+json answer to an [`Error`] by its `type` slug.
fn problem_error(status: u16, problem: &serde_json::Value) -> Error {
    let slug = problem
        .get("type")
        .and_then(|t| t.as_str())
        .and_then(|t| t.rsplit(':').next())
        .unwrap_or("");
    let detail = problem
        .get("detail")
        .and_then(|d| d.as_str())
        .unwrap_or("")
        .to_string();
    match slug {
        "conflict" => Error::Conflict(detail),
        "transaction-aborted" | "unknown-transaction" => Error::Aborted(detail),
        "outcome-pending" => Error::Unknown(detail),
        _ if status >= 500 => Error::Unavailable(format!("{status}: {detail}")),
        _ => Error::Rejected { status, detail },
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One transaction: a cheap handle (clones share it), usable from any task. Dropped without
/// commit, it is aborted by the shards' idle timeout (call [`Txn::abort`] to release its locks
/// at once).
#[derive(Clone)]
pub struct Txn {
    inner: Arc<TxnInner>,
}

struct TxnInner {
    client: Client,
    id: Uuid,
    priority: u64,
    state: Mutex<TxnState>,
}

#[derive(Default)]
struct TxnState {
    begun: BTreeSet<u16>,
    done: bool,
}

impl Txn {
    fn new(client: Client, priority: u64) -> Self {
        Txn {
            inner: Arc::new(TxnInner {
                client,
                id: Uuid::now_v7(),
                priority,
                state: Mutex::new(TxnState::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TxnState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// Shards this transaction has begun on so far.
    pub fn shards(&self) -> Vec<u16> {
        self.state().begun.iter().copied().collect()
    }

    async fn shard(&self, key: &str) -> Result<u16, Error> {
        let client = &self.inner.client;
        let shard = client.shard_of(key);
        {
            let st = self.state();
            if st.done {
                return Err(Error::Rejected {
                    status: 409,
                    detail: "the transaction is finished".into(),
                });
            }
            if st.begun.contains(&shard) {
                return Ok(shard);
            }
        }
        let body = BeginRequest {
            id: Some(self.inner.id),
            priority: Some(self.inner.priority),
        };
        let _: BeginResponse = client.post(shard, "/txns", &body).await?;
        self.state().begun.insert(shard);
        Ok(shard)
    }

    /// The committed value of `key` (or this transaction's own write), `None` if absent.
    pub async fn read(&self, key: &str) -> Result<Option<String>, Error> {
        self.read_with(key, false).await
    }

    /// Read `key` taking its exclusive lock (for a read-modify-write).
    pub async fn read_for_update(&self, key: &str) -> Result<Option<String>, Error> {
        self.read_with(key, true).await
    }

    async fn read_with(&self, key: &str, for_update: bool) -> Result<Option<String>, Error> {
        let shard = self.shard(key).await?;
        let path = format!("/txns/{}/read", self.inner.id);
        let body = ReadRequest {
            key: key.into(),
            for_update,
        };
        let r: ReadResponse = self.inner.client.post(shard, &path, &body).await?;
        Ok(r.value)
    }

    pub async fn write(&self, key: &str, value: &str) -> Result<(), Error> {
        let shard = self.shard(key).await?;
        let path = format!("/txns/{}/write", self.inner.id);
        let body = WriteRequest {
            key: key.into(),
            value: value.into(),
        };
        let _: serde_json::Value = self.inner.client.post(shard, &path, &body).await?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let shard = self.shard(key).await?;
        let path = format!("/txns/{}/delete", self.inner.id);
        let _: serde_json::Value = self
            .inner
            .client
            .post(shard, &path, &KeyRequest { key: key.into() })
            .await?;
        Ok(())
    }

    /// Commit. `Ok` means committed; [`Error::Aborted`] / [`Error::Conflict`] mean it did not;
    /// [`Error::Unknown`] means the answer was lost (a shard or the coordinator is down).
    pub async fn commit(&self) -> Result<(), Error> {
        let participants: Vec<u16> = {
            let mut st = self.state();
            if st.done {
                return Ok(());
            }
            st.done = true;
            st.begun.iter().copied().collect()
        };
        let Some(&first) = participants.first() else {
            return Ok(());
        };
        let path = format!("/txns/{}/commit", self.inner.id);
        let body = CommitRequest { participants };
        let mut last = String::new();
        for attempt in 0..COMMIT_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            match self
                .inner
                .client
                .post::<_, CommitResponse>(first, &path, &body)
                .await
            {
                Ok(r) if r.outcome == TxnOutcome::Committed => return Ok(()),
                Ok(_) => {
                    self.release_others(first).await;
                    return Err(Error::Aborted("the store aborted the transaction".into()));
                }
                Err(e @ (Error::Conflict(_) | Error::Aborted(_))) => {
                    self.release_others(first).await;
                    return Err(e);
                }
                Err(e @ Error::Rejected { .. }) => return Err(e),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::Unknown(last))
    }

    /// Abort on every shard touched (best effort: a shard that is down forgets the
    /// transaction anyway, and an idle one times out).
    pub async fn abort(&self) {
        let shards: Vec<u16> = {
            let mut st = self.state();
            st.done = true;
            st.begun.iter().copied().collect()
        };
        self.abort_on(&shards).await;
    }

    async fn release_others(&self, except: u16) {
        let shards: Vec<u16> = self.shards().into_iter().filter(|&s| s != except).collect();
        self.abort_on(&shards).await;
    }

    async fn abort_on(&self, shards: &[u16]) {
        let path = format!("/txns/{}/abort", self.inner.id);
        let empty = serde_json::json!({});
        let client = &self.inner.client;
        let calls = shards
            .iter()
            .map(|&s| client.post::<_, serde_json::Value>(s, &path, &empty));
        let _ = futures::future::join_all(calls).await;
    }
}
