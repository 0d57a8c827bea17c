//! One launcher for the checkout stack, shared by `tandem up`, `tandem demo`, `tandem bench` and
//! the end-to-end tests (`tandem-tests`):
//!
//! - [`Layout`]: where a stack lives — its Postgres server and its databases
//!   `<prefix>_<component>`.
//! - [`free_port`]: a free loopback port for a process that binds it itself.
//! - [`binary`]: where a workspace binary is (next to this executable, or a given directory).
//! - [`service_env`], [`orchestrator_env`], [`acceptor_env`]: the environment of a spawned
//!   binary.
//! - [`procs`]: the real binaries as child processes (killed on drop).
//! - [`stack`]: the whole stack in this process.
//! - [`tokens`]: random bearer tokens for a stack it starts (one per role).
//!
//! Fault injection is switched on explicitly here (`FAULT_INJECTION=on` for a spawned service,
//! `Switch::On` in-process): the demo, the tests, the bench and `tandem up` use the `/faults`
//! endpoints, whatever a production service's default is.

pub mod procs;
pub mod stack;
pub mod tokens;

pub use tokens::Tokens;

/// The Postgres server used when none is given.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The three services, in the order their ports follow the orchestrator's.
pub const SERVICES: [&str; 3] = ["inventory", "payment", "shipping"];
/// Every component of the stack: the orchestrator, then the services.
pub const COMPONENTS: [&str; 4] = ["orchestrator", "inventory", "payment", "shipping"];
/// The choreographed checkout's entry point (with NATS only): its database is
/// `<prefix>_orders`.
pub const ORDERS: &str = "orders";

/// The NATS server used when none is given (the choreographed checkout).
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";
/// What to do when NATS is unreachable.
pub const NATS_HINT: &str = "The choreographed checkout needs NATS with JetStream at NATS_URL \
     (default nats://127.0.0.1:4222). Start one with `nats-server -js -sd /tmp/tandem-nats` \
     (Debian: apt-get install nats-server) or `docker compose --profile dev up -d nats-dev`, or set NATS_URL.";

/// Where a stack lives: one Postgres server with one database per component named
/// `<db_prefix>_<component>` (each process creates its own if missing), or — the embedded
/// store — one SQLite file per component, `<data_dir>/<component>.db`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Any database URL of the server (its database name is ignored); unused on SQLite.
    pub server_url: String,
    pub db_prefix: String,
    /// Some: the embedded store, in this directory.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Layout {
    /// Postgres: one database per component on the server of `server_url`.
    pub fn new(server_url: impl Into<String>, db_prefix: impl Into<String>) -> Self {
        Layout {
            server_url: server_url.into(),
            db_prefix: db_prefix.into(),
            data_dir: None,
        }
    }

    /// SQLite: one file per component in `dir` (made absolute, so that the URLs name the
    /// same files whatever directory a process starts in).
    pub fn sqlite(dir: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        let dir = std::path::absolute(dir.into())?;
        Ok(Layout {
            server_url: String::new(),
            db_prefix: String::new(),
            data_dir: Some(dir),
        })
    }

    /// The database name of `component` (Postgres), or its file name (SQLite).
    pub fn database(&self, component: &str) -> String {
        match &self.data_dir {
            None => format!("{}_{component}", self.db_prefix),
            Some(_) => format!("{component}.db"),
        }
    }

    /// The database URL of `component`.
    pub fn database_url(&self, component: &str) -> String {
        match &self.data_dir {
            None => tandem_kit::db::database_url(&self.server_url, &self.database(component)),
            Some(dir) => tandem_kit::sqlite::url(&dir.join(self.database(component))),
        }
    }

    /// What a person reads: `SQLite files in <dir>` or `Postgres databases <prefix>_* on <host>`.
    pub fn describe(&self) -> String {
        match &self.data_dir {
            Some(dir) => format!("SQLite, one file per component in {}", dir.display()),
            None => format!("Postgres, databases {}_*", self.db_prefix),
        }
    }

    /// Every component's database name.
    pub fn databases(&self) -> Vec<String> {
        COMPONENTS.iter().map(|c| self.database(c)).collect()
    }

    /// Drop every component's database (their prepared transactions rolled back first), or
    /// remove its SQLite files.
    pub async fn drop_databases(&self) -> anyhow::Result<()> {
        match &self.data_dir {
            None => {
                for name in self.databases() {
                    tandem_kit::db::drop_database(&self.server_url, &name).await?;
                }
            }
            Some(dir) => {
                for name in self.databases() {
                    for suffix in ["", "-wal", "-shm"] {
                        let file = dir.join(format!("{name}{suffix}"));
                        match std::fs::remove_file(&file) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                return Err(anyhow::anyhow!("removing {}: {e}", file.display()));
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A free loopback port (bound, then released for the process that will bind it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The path of the workspace binary `name` (`orchestrator`, `inventory` …) in `dir`, or else
/// next to this executable (`cargo build` puts them side by side); an error saying how to build
/// it when it is missing.
pub fn binary(dir: Option<&std::path::Path>, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow::anyhow!("the executable has no directory"))?
            .to_path_buf(),
    };
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build the workspace's binaries first (`cargo build --workspace --bins`, \
         with --release for a release `tandem`) or pass --bin-dir",
        bin.display()
    );
    Ok(bin)
}

/// `http://127.0.0.1:<port>`.
pub fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Environment of a spawned service binary (`inventory`, `payment`, `shipping`): its own
/// database, its port, its pool, fault injection on.
pub fn service_env(layout: &Layout, service: &str, port: u16, pool: u32) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), layout.database_url(service)),
        ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        ("DB_POOL_SIZE".into(), pool.to_string()),
        ("FAULT_INJECTION".into(), "on".into()),
    ]
}

/// Environment of a spawned service taking part in the choreographed checkout: as
/// [`service_env`], plus `NATS_URL` (its outbox relay and durable consumer).
pub fn choreo_service_env(
    layout: &Layout,
    service: &str,
    port: u16,
    pool: u32,
    nats_url: &str,
) -> Vec<(String, String)> {
    let mut env = service_env(layout, service, port, pool);
    env.push(("NATS_URL".into(), nats_url.into()));
    env
}

/// Environment of a spawned orders service (the choreographed checkout's entry point).
pub fn orders_env(
    layout: &Layout,
    port: u16,
    pool: u32,
    nats_url: &str,
    step_timeout_ms: u64,
) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), layout.database_url(ORDERS)),
        ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        ("DB_POOL_SIZE".into(), pool.to_string()),
        ("NATS_URL".into(), nats_url.into()),
        ("STEP_TIMEOUT_MS".into(), step_timeout_ms.to_string()),
    ]
}

/// Environment of a spawned Paxos Commit acceptor named `name` (`acceptor_0` …: its database
/// `<prefix>_<name>`; its node name, the `Tandem-Sender` of what it sends, with a dash:
/// `acceptor-0`): its port, a pool of 2 (one message is one short transaction), fault
/// injection on.
pub fn acceptor_env(layout: &Layout, name: &str, port: u16) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), layout.database_url(name)),
        ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        ("DB_POOL_SIZE".into(), "2".into()),
        ("NODE_NAME".into(), name.replace('_', "-")),
        ("FAULT_INJECTION".into(), "on".into()),
    ]
}

/// Environment of a spawned orchestrator: its database, its port, the services' URLs (in
/// [`SERVICES`] order), its instance id (also its node name, the `Tandem-Sender` of its calls)
/// and pool, fault injection on.
pub fn orchestrator_env(
    layout: &Layout,
    port: u16,
    services: &[String; 3],
    instance: &str,
    pool: u32,
) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), layout.database_url("orchestrator")),
        ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        ("INVENTORY_URL".into(), services[0].clone()),
        ("PAYMENT_URL".into(), services[1].clone()),
        ("SHIPPING_URL".into(), services[2].clone()),
        ("INSTANCE_ID".into(), instance.into()),
        ("NODE_NAME".into(), instance.into()),
        ("DB_POOL_SIZE".into(), pool.to_string()),
        ("FAULT_INJECTION".into(), "on".into()),
    ]
}

/// A stack that is already up (`tandem up`, a deployment), for the commands that can target one
/// instead of starting their own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunningStack {
    /// Target a running stack at this orchestrator URL; the services are then expected on the
    /// next three ports unless given.
    #[arg(long)]
    pub orchestrator_url: Option<String>,
    #[arg(long)]
    pub inventory_url: Option<String>,
    #[arg(long)]
    pub payment_url: Option<String>,
    #[arg(long)]
    pub shipping_url: Option<String>,
}

impl RunningStack {
    /// The URLs of the orchestrator and the services (in [`COMPONENTS`] order), if a running
    /// stack was named.
    pub fn urls(&self) -> anyhow::Result<Option<[String; 4]>> {
        let Some(o) = &self.orchestrator_url else {
            return Ok(None);
        };
        let o = o.trim_end_matches('/').to_string();
        let or_next =
            |v: &Option<String>, offset| v.clone().map_or_else(|| next_port(&o, offset), Ok);
        Ok(Some([
            o.clone(),
            or_next(&self.inventory_url, 1)?,
            or_next(&self.payment_url, 2)?,
            or_next(&self.shipping_url, 3)?,
        ]))
    }
}

/// The URL `offset` ports after `url`'s (services of a running stack follow its orchestrator).
pub fn next_port(url: &str, offset: u16) -> anyhow::Result<String> {
    let (head, port) = url
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{url} has no port"))?;
    let port: u16 = port.parse()?;
    Ok(format!("{head}:{}", port + offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_urls_and_ports() {
        let l = Layout::new("postgres://u@h:5/postgres?sslmode=disable", "p");
        assert_eq!(
            l.database_url("payment"),
            "postgres://u@h:5/p_payment?sslmode=disable"
        );
        assert_eq!(l.databases()[0], "p_orchestrator");
        assert_eq!(
            next_port("http://127.0.0.1:8080/", 3).unwrap(),
            "http://127.0.0.1:8083"
        );
        assert!(next_port("nothing", 1).is_err());
        let lite = Layout::sqlite("/tmp/tandem-x").unwrap();
        assert_eq!(
            lite.database_url("payment"),
            "sqlite:///tmp/tandem-x/payment.db"
        );
        assert!(tandem_kit::sqlite::is_sqlite(
            &lite.database_url("orchestrator")
        ));
        let env = service_env(&l, "payment", 7, 3);
        assert!(
            env.contains(&("FAULT_INJECTION".into(), "on".into())),
            "{env:?}"
        );
    }
}
