//! `kv`: Tandem's sharded transactional key-value store — one binary that runs either a
//! **shard** (owns the keys that hash to it, with its own redb file) or the **coordinator**
//! (the 2PC transaction manager for transactions that span shards).
//!
//! Where things live:
//! - this file: [`Config`] (env / flags, default ports 8091–8093 for shards 0–2 and 8090 for
//!   the coordinator), [`build`] (open the store and recover) and [`App::run`] (serve until
//!   shutdown), [`Error`];
//! - [`store`]: the durable state on redb, every write transaction with immediate durability;
//! - [`locks`]: the pure lock table (shared / exclusive, wait-die);
//! - [`shard`]: transactions on one shard — begin, read, write, delete, one-phase commit,
//!   abort, idle timeouts, recovery of prepared transactions (their locks first);
//! - [`participant`]: the shard's 2PC participant driver, running
//!   `tandem_protocols::two_phase::Participant`;
//! - [`coordinator`]: the coordinator service, running `two_phase::Coordinator`;
//! - `driver`: what those two drivers share (live instances, forced and lazy writes, the exit
//!   on a failed forced write);
//! - [`net`]: the 2PC message envelope, fire-and-forget sends, timers;
//! - [`api`]: the HTTP routes and their problem+json errors;
//! - [`local`]: a whole store (shards + coordinator) in one process, for `tandem kv up` and tests;
//! - `negative_control` (tests only): the checker against a store whose reads take no locks.
//!
//! The design, the serializability argument and the figures are in `docs/kv.md`; the client
//! and the history checker in the `kv-client` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub mod api;
pub mod coordinator;
mod driver;
pub mod local;
pub mod locks;
pub mod net;
pub mod participant;
pub mod shard;
pub mod store;

#[cfg(test)]
mod negative_control;

/// The default shard URLs (three shards on 8091–8093).
pub const DEFAULT_SHARDS: &str =
    "http://127.0.0.1:8091,http://127.0.0.1:8092,http://127.0.0.1:8093";
/// The coordinator's default port; shard `i` listens on `8091 + i`.
pub const COORDINATOR_PORT: u16 = 8090;
pub const FIRST_SHARD_PORT: u16 = 8091;

/// This crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("configuration: {0}")]
    Config(String),
}

impl From<Error> for tandem_kit::Problem {
    fn from(e: Error) -> Self {
        tandem_kit::Problem::internal(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Shard,
    Coordinator,
}

/// Configuration, from flags or the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kv",
    about = "Tandem's transactional key-value store: a shard or the 2PC coordinator"
)]
pub struct Config {
    #[arg(long, env = "KV_ROLE", value_enum, default_value = "shard")]
    pub role: Role,
    /// This shard's index into `--shards` (shards only).
    #[arg(long, env = "KV_SHARD_INDEX", default_value_t = 0)]
    pub shard_index: u16,
    /// Every shard's base URL, in index order (comma-separated). Keys hash onto them.
    #[arg(long, env = "KV_SHARDS", value_delimiter = ',', default_value = DEFAULT_SHARDS)]
    pub shards: Vec<String>,
    #[arg(
        long,
        env = "KV_COORDINATOR_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub coordinator_url: String,
    /// Default: 127.0.0.1:8090 (coordinator) or 127.0.0.1:(8091 + index) (shard).
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// Where the redb file lives. Default: `data/kv/coordinator` or `data/kv/shard-<index>`.
    #[arg(long, env = "KV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// An active transaction idle this long is aborted and its locks released. Prepared
    /// transactions never time out.
    #[arg(long, env = "KV_TXN_TIMEOUT_MS", default_value_t = 10_000)]
    pub txn_timeout_ms: u64,
    /// Longest wait for a lock (wait-die's older waiter) before the waiter aborts.
    #[arg(long, env = "KV_LOCK_WAIT_MS", default_value_t = 2_000)]
    pub lock_wait_ms: u64,
    /// How long a commit request waits for the 2PC outcome before answering 503
    /// `outcome-pending` (the client asks again).
    #[arg(long, env = "KV_COMMIT_WAIT_MS", default_value_t = 5_000)]
    pub commit_wait_ms: u64,
    /// Coordinator: how long it collects votes before aborting.
    #[arg(long, env = "KV_VOTE_TIMEOUT_MS", default_value_t = 5_000)]
    pub vote_timeout_ms: u64,
    /// Interval of an in-doubt participant's queries and of the coordinator's COMMIT resends.
    #[arg(long, env = "KV_RETRY_MS", default_value_t = 300)]
    pub retry_ms: u64,
    /// Open transactions allowed on a shard (429 beyond).
    #[arg(long, env = "KV_MAX_OPEN_TXNS", default_value_t = 10_000)]
    pub max_open_txns: usize,
    /// Test-only weakening (reads take no lock): never reachable from flags or the API.
    #[arg(skip = true)]
    lock_reads: bool,
    #[command(flatten)]
    pub auth: tandem_kit::auth::AuthConfig,
}

impl Config {
    /// The loaded token settings (see `tandem_kit::auth`).
    pub fn auth(&self) -> Result<tandem_kit::auth::Auth, Error> {
        tandem_kit::auth::Auth::load(&self.auth).map_err(|e| Error::Config(e.to_string()))
    }

    /// A shard on an ephemeral port (tests, `tandem kv up`).
    pub fn shard(
        index: u16,
        shards: Vec<String>,
        coordinator_url: String,
        data_dir: PathBuf,
    ) -> Self {
        let mut c = Config::parse_from(["kv"]);
        c.role = Role::Shard;
        c.shard_index = index;
        c.shards = shards;
        c.coordinator_url = coordinator_url;
        c.data_dir = Some(data_dir);
        c.listen_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c
    }

    /// The coordinator on an ephemeral port.
    pub fn coordinator(shards: Vec<String>, data_dir: PathBuf) -> Self {
        let mut c = Config::shard(0, shards, String::new(), data_dir);
        c.role = Role::Coordinator;
        c
    }

    /// The negative control: reads without locks. Only tests can build it.
    #[cfg(test)]
    pub(crate) fn weakened(mut self) -> Self {
        self.lock_reads = false;
        self
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr.unwrap_or_else(|| {
            let port = match self.role {
                Role::Coordinator => COORDINATOR_PORT,
                Role::Shard => FIRST_SHARD_PORT.saturating_add(self.shard_index),
            };
            SocketAddr::from(([127, 0, 0, 1], port))
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| match self.role {
            Role::Coordinator => PathBuf::from("data/kv/coordinator"),
            Role::Shard => PathBuf::from(format!("data/kv/shard-{}", self.shard_index)),
        })
    }

    pub(crate) fn timing(&self) -> Timing {
        Timing {
            txn_timeout: Duration::from_millis(self.txn_timeout_ms),
            lock_wait: Duration::from_millis(self.lock_wait_ms),
            commit_wait: Duration::from_millis(self.commit_wait_ms),
            vote_timeout: Duration::from_millis(self.vote_timeout_ms),
            retry: Duration::from_millis(self.retry_ms.max(1)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub txn_timeout: Duration,
    pub lock_wait: Duration,
    pub commit_wait: Duration,
    pub vote_timeout: Duration,
    pub retry: Duration,
}

impl Timing {
    /// How long each 2PC timer runs: the coordinator's vote collection, an unprepared
    /// participant's deadline (its idle timeout), and the resend / query interval.
    pub(crate) fn of(&self, t: &tandem_protocols::two_phase::Timer) -> Duration {
        use tandem_protocols::two_phase::Timer;
        match t {
            Timer::Votes => self.vote_timeout,
            Timer::VoteDeadline => self.txn_timeout,
            Timer::Resend | Timer::InDoubt => self.retry,
        }
    }
}

/// A built process, ready to serve.
#[derive(Clone)]
pub enum App {
    Shard(shard::Shard),
    Coordinator(coordinator::Coordinator),
}

/// Open the store and recover. A shard rebuilds the locks of its prepared transactions here,
/// before [`App::run`] serves a single request.
pub async fn build(config: Config) -> Result<App, Error> {
    if config.shards.is_empty() || config.shards.len() > usize::from(u8::MAX) {
        return Err(Error::Config("--shards needs 1 to 255 URLs".into()));
    }
    let store = store::Store::open(&config.data_dir())?;
    match config.role {
        Role::Shard => {
            if usize::from(config.shard_index) >= config.shards.len() {
                return Err(Error::Config(format!(
                    "--shard-index {} but only {} shards",
                    config.shard_index,
                    config.shards.len()
                )));
            }
            Ok(App::Shard(shard::Shard::recover(&config, store)?))
        }
        Role::Coordinator => Ok(App::Coordinator(coordinator::Coordinator::recover(
            &config, store,
        )?)),
    }
}

impl App {
    pub fn router(&self) -> axum::Router {
        match self {
            App::Shard(s) => api::shard_routes(s.clone()),
            App::Coordinator(c) => api::coordinator_routes(c.clone()),
        }
    }

    /// Start the background work (recovery's queries / resends, timeouts) and serve on
    /// `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let router = self.router();
        let background = match &self {
            App::Shard(s) => s.start(),
            App::Coordinator(c) => c.start(),
        };
        let addr = listener.local_addr()?;
        let auth = match &self {
            App::Shard(s) => s.inner.net.auth(),
            App::Coordinator(c) => c.auth(),
        };
        auth.check_exposure(addr, "kv")
            .map_err(|e| Error::Config(e.to_string()))?;
        tracing::info!(%addr, "kv listening");
        let served = tandem_kit::http::serve(listener, router, shutdown).await;
        background.abort();
        served?;
        Ok(())
    }
}
