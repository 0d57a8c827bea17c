//! Configuration from environment variables (or flags), with defaults that work on a developer
//! machine with Postgres on 127.0.0.1:5432.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "orchestrator", about = "Tandem saga orchestrator")]
pub struct Config {
    /// The orchestrator's own database, as its runtime role (without DATABASE_OWNER_URL also
    /// created if missing and migrated at start with this role: the privileged zero-setup path).
    /// Postgres by default; `sqlite:///path/orchestrator.db` runs sagas on an embedded SQLite
    /// file instead (one instance per file, no transactions: docs/storage.md).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tandem_orchestrator"
    )]
    pub database_url: String,
    /// The same database as its owner role: migrations run with it (one connection at start),
    /// nothing is created (`tandem db provision`, docs/security.md). Postgres only: refused
    /// with a SQLite DATABASE_URL.
    #[arg(long, env = "DATABASE_OWNER_URL")]
    pub database_owner_url: Option<String>,

    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:8081")]
    pub inventory_url: String,
    #[arg(long, env = "PAYMENT_URL", default_value = "http://127.0.0.1:8082")]
    pub payment_url: String,
    #[arg(long, env = "SHIPPING_URL", default_value = "http://127.0.0.1:8083")]
    pub shipping_url: String,
    /// More services a definition may call: `name=url,name=url`.
    #[arg(long, env = "EXTRA_SERVICES", default_value = "")]
    pub extra_services: String,

    /// Maximum database connections. The orchestrator opens one more, outside the pool, to
    /// LISTEN for work other instances hand back. The whole default stack (orchestrator 20 + 1,
    /// three services at 5 + 2, three acceptors at 3) uses 51 of the development server's 100.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 20)]
    pub db_pool_size: u32,

    /// Identity of this instance in leases. Default: `<hostname>:<listen port>`, so a restarted
    /// instance takes its own leases back at once instead of waiting for them to expire.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// This node's name, sent in the `Tandem-Sender` header of every call to a service (link
    /// faults match it: give two orchestrators different names to fault one's links).
    #[arg(long, env = "NODE_NAME", default_value = "orchestrator")]
    pub node_name: String,

    /// `on` mounts the `/faults` endpoints (the kit's scoped fault injection) on what
    /// participants and acceptors send this node — the in-doubt decision query and the
    /// acceptors' Paxos messages — so links to it can be cut per transaction and healed. Any
    /// client could then make it lose them: for demos and tests only. Off by default.
    #[arg(long, env = "FAULT_INJECTION", value_enum, default_value = "off")]
    pub fault_injection: tandem_kit::faults::Switch,

    /// How long a claim on a saga lasts without renewal (each persisted transition renews it).
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 15_000)]
    pub lease_ttl_ms: u64,

    /// Longest an idle instance sleeps between looks for due work. It looks earlier when the
    /// next retry or lease expiry comes sooner, and at once when another instance hands work
    /// back (LISTEN/NOTIFY); this interval is the fallback if notifications are lost.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 500)]
    pub poll_interval_ms: u64,

    /// Sagas claimed per poll at most.
    #[arg(long, env = "CLAIM_BATCH", default_value_t = 64)]
    pub claim_batch: i64,

    /// Sagas driven concurrently by this instance at most.
    #[arg(long, env = "MAX_ACTIVE_SAGAS", default_value_t = 1024)]
    pub max_active_sagas: usize,

    /// Group commit: tasks persisting saga transitions (at least 1), each writing every
    /// transition waiting (up to TRANSITION_BATCH) in one statement. Each holds one pool
    /// connection while writing.
    #[arg(long, env = "TRANSITION_WRITERS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub transition_writers: u16,

    /// Most transitions persisted in one statement (at least 1).
    #[arg(long, env = "TRANSITION_BATCH", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub transition_batch: u16,

    /// The LISTEN connection runs `SELECT 1` this often and counts a missing answer (within
    /// the same time) as a lost connection: a silent network break is noticed, the listener
    /// reconnects and runs a claim pass (sqlx has no client-side TCP keepalive).
    #[arg(long, env = "LISTEN_HEARTBEAT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub listen_heartbeat_ms: u64,

    /// The URL participants of a 2PC transaction use to ask this instance for a decision
    /// (default: `http://<the bound listen address>`).
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The 2F+1 Paxos Commit acceptors (`acceptor` binaries), comma-separated, in one order
    /// shared by every orchestrator instance (a leader counts acceptors by their index).
    #[arg(
        long,
        env = "ACCEPTOR_URLS",
        default_value = "http://127.0.0.1:8084,http://127.0.0.1:8085,http://127.0.0.1:8086"
    )]
    pub acceptor_urls: String,

    /// A Paxos Commit leader with no decision this long starts its next ballot (phase 1 on the
    /// acceptors): how soon a takeover, or a lost acceptor message, is recovered from.
    #[arg(long, env = "PAXOS_PROGRESS_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub paxos_progress_ms: u64,

    /// Every 3PC timer: how long the coordinator waits for a vote or an ack, and a participant
    /// for its leader before it suspects it and runs the termination protocol. 3PC is correct
    /// only if this is far above the worst message delay (a timeout is its failure detector).
    #[arg(long, env = "THREE_PC_TIMEOUT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub three_pc_timeout_ms: u64,

    /// Extra definition files (`*.json`) loaded at start, besides the built-in checkout.
    #[arg(long, env = "DEFINITIONS_DIR")]
    pub definitions_dir: Option<PathBuf>,

    /// How long client idempotency keys of `POST /sagas` are kept (hours).
    #[arg(long, env = "IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24)]
    pub idempotency_retention_hours: u64,

    /// `off`: finished sagas are kept forever. `on` (default): completed and compensated sagas
    /// unchanged for SAGA_RETENTION_SECS are deleted with their events, after every service
    /// was told to forget their barrier rows (docs/security.md, "Retention"). Failed (parked)
    /// and unfinished sagas, and 2PC / Paxos Commit transactions, are never deleted.
    #[arg(long, env = "SAGA_PURGE", value_enum, default_value = "on")]
    pub saga_purge: tandem_kit::faults::Switch,

    /// How long a finished saga is kept after its last change (seconds; default 30 days). Keep
    /// it longer than any client may retry an order: deleting a saga frees its business key.
    #[arg(long, env = "SAGA_RETENTION_SECS", default_value_t = 30 * 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub saga_retention_secs: u64,

    #[command(flatten)]
    pub purge: tandem_kit::retention::PurgePace,
    #[command(flatten)]
    pub auth: tandem_kit::auth::AuthConfig,
}

impl Config {
    /// Defaults with the given database and service URLs (tests, embedded stacks).
    pub fn new(
        database_url: impl Into<String>,
        inventory: &str,
        payment: &str,
        shipping: &str,
    ) -> Self {
        let mut c = Config::parse_from(["orchestrator"]);
        c.database_url = database_url.into();
        c.database_owner_url = None;
        c.inventory_url = inventory.to_string();
        c.payment_url = payment.to_string();
        c.shipping_url = shipping.to_string();
        c
    }

    /// What retention keeps how long ([`crate::retention`]).
    pub fn retention(&self) -> crate::retention::Settings {
        crate::retention::Settings {
            sagas: (self.saga_purge == tandem_kit::faults::Switch::On)
                .then(|| Duration::from_secs(self.saga_retention_secs)),
            keys: Duration::from_secs(self.idempotency_retention_hours * 3600),
            batch: self.purge.purge_batch,
            every: self.purge.every(),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn heartbeat(&self) -> crate::wake::Heartbeat {
        let every = Duration::from_millis(self.listen_heartbeat_ms);
        crate::wake::Heartbeat {
            every: Some(every),
            timeout: every,
        }
    }

    /// Service name → base URL (no trailing slash).
    pub fn services(&self) -> crate::Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        m.insert(
            "inventory".to_string(),
            self.inventory_url.trim_end_matches('/').to_string(),
        );
        m.insert(
            "payment".to_string(),
            self.payment_url.trim_end_matches('/').to_string(),
        );
        m.insert(
            "shipping".to_string(),
            self.shipping_url.trim_end_matches('/').to_string(),
        );
        for pair in self
            .extra_services
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (name, url) = pair.split_once('=').ok_or_else(|| {
                crate::Error::Config(format!("EXTRA_SERVICES entry {pair:?} is not name=url"))
            })?;
            m.insert(
                name.trim().to_string(),
                url.trim().trim_end_matches('/').to_string(),
            );
        }
        Ok(m)
    }

    /// The Paxos Commit acceptors' base URLs: 2F+1 of them (1, 3, 5 or 7).
    pub fn acceptors(&self) -> crate::Result<Vec<String>> {
        let urls: Vec<String> = self
            .acceptor_urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.len().is_multiple_of(2) || urls.len() > tandem_kit::paxos::MAX_ACCEPTORS {
            return Err(crate::Error::Config(format!(
                "ACCEPTOR_URLS lists {} acceptors; Paxos Commit needs 2F+1 of them (1, 3, 5 or 7)",
                urls.len()
            )));
        }
        Ok(urls)
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "localhost".to_string());
            match self.listen_addr.port() {
                // Port 0 (tests): every instance must still have its own identity.
                0 => format!("{host}:{}", uuid::Uuid::now_v7().simple()),
                port => format!("{host}:{port}"),
            }
        })
    }
}
