//! One service process: configuration (env or flags), database + migrations, router, serving.
//! Inventory, payment and shipping differ only in their [`Spec`] (name, port, migrations, their
//! actions and compensations as data, their read routes); everything else about running them
//! is here, once.
//!
//! The store is chosen here, once, by the URL ([`build`]): Postgres (the default) or an
//! embedded SQLite file (`DATABASE_URL=sqlite:///path/x.db`, see [`crate::sqlite`]). Either
//! way the saga endpoints, the barrier, retention, the reads, `/healthz`, `/metrics`, `/stats`
//! and `/faults` run on [`App::db`] ([`crate::store`]). What needs Postgres itself — the 2PC,
//! 3PC and Paxos participants (prepared transactions), their start-up recovery and gauges,
//! the choreography's outbox relay, `DATABASE_OWNER_URL` — asks [`App::postgres`], which on
//! SQLite is one clear refusal.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use clap::{Args, FromArgMatches};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::Error;
use crate::auth::{Access, Auth, AuthConfig, Rule, rule};
use crate::effect::{ActionEndpoint, Compensation};
use crate::faults::{Faults, Switch};
use crate::hooks::TestHooks;
use crate::problem::Problem;
use crate::store::Db;

/// What makes a service this service.
pub struct Spec {
    /// Binary name, also used in logs, `GET /healthz` and the default database
    /// (`tandem_<name>`).
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Default port on 127.0.0.1.
    pub port: u16,
    /// The service's own migrations (`sqlx::migrate!`); the kit adds the barrier table (see
    /// [`crate::barrier::migrator`]).
    pub migrations: &'static Migrator,
    /// The same schema for SQLite (`migrations/sqlite/<service>/`, numbered from 2 too); the
    /// kit adds its SQLite barrier table ([`Spec::sqlite_migrator`]).
    pub sqlite_migrations: &'static Migrator,
    /// The saga actions (each also a 2PC prepare), served by [`crate::saga`].
    pub actions: &'static [&'static dyn ActionEndpoint],
    /// The saga compensations, served by [`crate::saga`].
    pub compensations: &'static [&'static Compensation],
    /// The service's own read / setup routes, documented (the saga endpoints, `/healthz`, the
    /// fault endpoints and the shared ones are added by [`App::router`]).
    pub routes: fn() -> crate::api::Api<App>,
    /// Who may call [`Spec::routes`] (see [`crate::auth`]); the rules of the kit's own routes
    /// are in [`KIT_RULES`] and the saga endpoints need a service token.
    pub access: &'static [Rule],
}

/// The access table of the routes every service gets from the kit (its saga endpoints, built
/// from [`Spec::actions`] and [`Spec::compensations`], need [`Access::Service`] too; the
/// `/faults` endpoints, mounted only when FAULT_INJECTION=on, are [`crate::faults::ACCESS`]).
pub const KIT_RULES: &[Rule] = &[
    rule("GET", "/healthz", Access::Open),
    // 2PC: the coordinator's messages; status also for operators' audits.
    rule("POST", "/2pc/prepare", Access::Service),
    rule("POST", "/2pc/commit", Access::Service),
    rule("POST", "/2pc/abort", Access::Service),
    rule("GET", "/2pc/status", Access::ServiceOrOperator),
    // Paxos Commit: the leader's messages to a participant.
    rule("POST", "/paxos/prepare", Access::Service),
    rule("POST", "/paxos/outcome", Access::Service),
    // 3PC: the core's messages between coordinator and participants (the termination
    // protocol too); the branches' state for audits.
    rule("POST", "/3pc/msg", Access::Service),
    rule("POST", "/3pc-quorum/msg", Access::Service),
    rule("GET", "/3pc/{txn_id}", Access::ServiceOrOperator),
    // Retention: the orchestrator telling the service which sagas are final and past retention.
    rule("POST", "/barrier/forget", Access::Service),
];

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Spec {
    /// The migrations of this service's database: the barrier and 2PC branch tables plus its
    /// own.
    pub fn migrator(&self) -> Migrator {
        let own = Migrator::with_migrations(self.migrations.migrations.to_vec());
        crate::three_phase::with_table(crate::retention::with_backstop_index(
            crate::choreo::outbox::migrator(crate::participant::branch::with_branch_table(
                crate::barrier::migrator(own),
            )),
        ))
    }

    /// The migrations of this service's SQLite database: the barrier table (and its backstop
    /// index) plus its own. The 2PC / 3PC tables and the outbox are Postgres only.
    pub fn sqlite_migrator(&self) -> Migrator {
        let own = Migrator::with_migrations(self.sqlite_migrations.migrations.to_vec());
        crate::retention::with_backstop_index(crate::barrier::sqlite_migrator(own))
    }

    /// Connect (creating the database if missing) and apply the migrations.
    pub async fn build(&'static self, config: Config) -> Result<App, Error> {
        build(self, config).await
    }
}

/// Configuration, from the environment (or flags); defaults come from the [`Spec`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// This service's own database, as its runtime role. Without DATABASE_OWNER_URL it is also
    /// created if missing and migrated at start with this role (the zero-setup path, logged as
    /// privileged). `sqlite:///path/file.db`: an embedded SQLite file instead (created if
    /// missing; no 2PC / 3PC / Paxos participant, no choreography).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// The same database as its owner role: when set, migrations run with it (one connection at
    /// start, then closed) and nothing is created; the runtime role only reads and writes rows.
    /// `tandem db provision` makes both roles (docs/security.md).
    #[arg(long, env = "DATABASE_OWNER_URL")]
    pub database_owner_url: Option<String>,
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen_addr: SocketAddr,
    /// Connections in the pool (the shared development server allows 100 in all).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 5)]
    pub db_pool_size: u32,
    /// Connections of the control pool, used only to commit, abort and recover prepared
    /// transactions (and for 2PC status), so those never wait behind business traffic.
    #[arg(long, env = "CONTROL_POOL_SIZE", default_value_t = 2)]
    pub control_pool_size: u32,
    /// `lock_timeout` of business statements: a lock wait longer than this (say, behind a
    /// prepared transaction) answers 503 with `Retry-After` instead of holding a connection.
    #[arg(long, env = "LOCK_TIMEOUT_MS", default_value_t = 2000)]
    pub lock_timeout_ms: u64,
    /// A 2PC branch prepared for longer than this asks its coordinator for the outcome (and
    /// again every as long); at start-up every prepared branch asks at once.
    #[arg(long, env = "TPC_IN_DOUBT_AFTER_MS", default_value_t = 5000)]
    pub in_doubt_after_ms: u64,
    /// `on` mounts the `/faults` endpoints (scoped fault injection: any client can then make
    /// this service fail, stall or lose responses — for demos and tests only). Off by default.
    #[arg(long, env = "FAULT_INJECTION", value_enum, default_value = "off")]
    pub fault_injection: Switch,
    /// NATS with JetStream (`nats://127.0.0.1:4222`): when set, the service also takes part in
    /// the choreographed checkout (its outbox relay and durable consumer). Unset: saga calls and
    /// 2PC only.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// This node's name: sent in the `Tandem-Sender` header of every request it makes, and the
    /// receiver named by its link faults. Default: the service's name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Barrier rows older than this many days are deleted whatever their saga (a backstop,
    /// hourly; 0 = never). UNSAFE for a saga parked (failed) longer than this: its late
    /// compensation would no longer be recognised. The orchestrator's `POST /barrier/forget`
    /// is the safe path; see docs/security.md, "Retention".
    #[arg(long, env = "BARRIER_BACKSTOP_DAYS", default_value_t = 90)]
    pub barrier_backstop_days: u64,
    #[command(flatten)]
    pub auth: AuthConfig,
}

impl Config {
    /// From the process's flags and environment, with `spec`'s defaults; exits with clap's
    /// message on bad input.
    pub fn parse(spec: &Spec) -> Self {
        let matches = Config::command(spec).get_matches();
        Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The clap command (flags, env, defaults, `--help`) of `spec`'s binary.
    pub fn command(spec: &Spec) -> clap::Command {
        Config::augment_args(clap::Command::new(spec.name))
            .about(spec.about)
            .long_about(None)
            .mut_arg("database_url", |a| {
                a.default_value(leak(format!(
                    "postgres://postgres@127.0.0.1:5432/tandem_{}",
                    spec.name
                )))
                .required(false)
            })
            .mut_arg("listen_addr", |a| {
                a.default_value(leak(format!("127.0.0.1:{}", spec.port)))
                    .required(false)
            })
    }

    /// Defaults with another database and an ephemeral port (tests, the in-process stack);
    /// fault injection off, as in production.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            database_owner_url: None,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_pool_size: 5,
            control_pool_size: 2,
            lock_timeout_ms: 2000,
            in_doubt_after_ms: 5000,
            fault_injection: Switch::Off,
            nats_url: None,
            node_name: None,
            barrier_backstop_days: 90,
            auth: AuthConfig::default(),
        }
    }

    /// The same with these token settings (see [`crate::auth`]).
    pub fn with_auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// The same with fault injection switched on or off (demos and tests turn it on).
    pub fn with_fault_injection(mut self, switch: Switch) -> Self {
        self.fault_injection = switch;
        self
    }
}

/// clap (without its `string` feature) takes `&'static str` defaults; parsing runs once per
/// process, so these two small strings live as long as it does.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A ready service: connected, migrated.
#[derive(Debug, Clone)]
pub struct App {
    /// Business statements, on either store ([`crate::store`]; on Postgres with
    /// `lock_timeout`).
    pub db: Db,
    /// On Postgres, its pools (see [`App::postgres`]); `None` on SQLite.
    pg: Option<Postgres>,
    pub faults: Faults,
    /// This node's name ([`Config::node_name`]).
    pub node: String,
    /// Test-only pauses (see [`crate::hooks`]); none in production.
    pub hooks: TestHooks,
    pub spec: &'static Spec,
    /// See [`Config::in_doubt_after_ms`].
    pub in_doubt_after: std::time::Duration,
    /// See [`Config::barrier_backstop_days`]; `None`: off.
    pub barrier_backstop: Option<std::time::Duration>,
    /// Accepted tokens and this service's own (see [`crate::auth`]).
    pub auth: Auth,
    /// Branches a crash left `preparing` that start-up could not abort yet: their row was still
    /// locked (the killed process's Postgres session had not ended). The in-doubt timer retries.
    pub lost_at_start: std::sync::Arc<std::sync::Mutex<Vec<crate::participant::branch::BranchId>>>,
}

/// The pools of a service on Postgres.
#[derive(Debug, Clone)]
pub struct Postgres {
    /// Business statements (with `lock_timeout`): the same pool as [`App::db`]'s.
    pub pool: PgPool,
    /// Commit / abort / recovery of prepared transactions only (no `lock_timeout`).
    pub control: PgPool,
}

/// Open the store `config.database_url` names (the one place the backend is chosen), migrated.
/// Then, on Postgres, recover the 2PC branches a crash left.
pub async fn build(spec: &'static Spec, config: Config) -> Result<App, Error> {
    let (db, pg) = if crate::sqlite::is_sqlite(&config.database_url) {
        (open_sqlite(spec, &config).await?, None)
    } else {
        let pg = open_postgres(spec, &config).await?;
        (Db::Postgres(pg.pool.clone()), Some(pg))
    };
    let auth = Auth::load(&config.auth)?;
    let node = config
        .node_name
        .clone()
        .unwrap_or_else(|| spec.name.to_string());
    let app = App {
        db,
        pg,
        faults: Faults::for_node(config.fault_injection, &node),
        node,
        hooks: TestHooks::default(),
        spec,
        in_doubt_after: std::time::Duration::from_millis(config.in_doubt_after_ms),
        barrier_backstop: (config.barrier_backstop_days > 0)
            .then(|| std::time::Duration::from_secs(config.barrier_backstop_days * 86_400)),
        auth,
        lost_at_start: std::sync::Arc::default(),
    };
    if app.pg.is_some() {
        crate::participant::recover_at_start(&app)
            .await
            .map_err(|p| Error::Recovery(p.to_string()))?;
    }
    Ok(app)
}

/// SQLite: open the file (created if missing) and apply the SQLite schema. There is no owner
/// role to migrate as: `DATABASE_OWNER_URL` is refused.
async fn open_sqlite(spec: &'static Spec, config: &Config) -> Result<Db, Error> {
    let migrate_err = |source: crate::db::MigrateFailed| Error::Migrate {
        service: spec.name,
        source: Box::new(source),
    };
    if config
        .database_owner_url
        .as_deref()
        .is_some_and(|u| !u.is_empty())
    {
        return Err(Error::Connect(
            format!(
                "DATABASE_OWNER_URL is set but DATABASE_URL names a SQLite file ({}): the owner \
                 and runtime roles are Postgres's (docs/security.md); unset it, or use Postgres",
                config.database_url
            )
            .into(),
        ));
    }
    let pool = crate::sqlite::open(&config.database_url, config.db_pool_size).await?;
    spec.sqlite_migrator()
        .run(&pool)
        .await
        .map_err(|e| migrate_err(crate::db::MigrateFailed::Migrate(e)))?;
    tracing::info!(url = %config.database_url, "{}: on SQLite (embedded store)", spec.name);
    Ok(Db::Sqlite(pool))
}

/// Postgres: migrate (as the owner role when configured, see [`crate::db::migrate`]), then
/// open the runtime pools.
async fn open_postgres(spec: &'static Spec, config: &Config) -> Result<Postgres, Error> {
    crate::db::migrate(
        &config.database_url,
        config.database_owner_url.as_deref(),
        &spec.migrator(),
    )
    .await
    .map_err(|source| Error::Migrate {
        service: spec.name,
        source: Box::new(source),
    })?;
    let business_url = with_lock_timeout(&config.database_url, config.lock_timeout_ms);
    let pool = crate::db::open(&business_url, config.db_pool_size)
        .await
        .map_err(|e| Error::Connect(e.into()))?;
    // Control statements never wait on business locks by design; the timeout is a safety net
    // that turns a mistake into a 503 instead of a hung request. Prepared transactions are
    // finished here by the role that prepared them (the runtime role: Postgres lets only that
    // role or a superuser run COMMIT / ROLLBACK PREPARED).
    let control_url = with_lock_timeout(&config.database_url, CONTROL_LOCK_TIMEOUT_MS);
    let control = crate::db::open(&control_url, config.control_pool_size)
        .await
        .map_err(|e| Error::Connect(e.into()))?;
    Ok(Postgres { pool, control })
}

/// `lock_timeout` of the control pool.
const CONTROL_LOCK_TIMEOUT_MS: u64 = 10_000;

/// `url` with `-c lock_timeout=<ms>` among its connection `options` (Postgres merges several).
fn with_lock_timeout(url: &str, ms: u64) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20lock_timeout%3D{ms}")
}

impl App {
    /// The Postgres pools, for what needs prepared transactions (the 2PC / 3PC / Paxos
    /// participants). On SQLite: the answer a Postgres without `max_prepared_transactions`
    /// gives (503 `prepared-transactions-disabled`), its detail naming the SQLite file.
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    pub fn postgres(&self) -> Result<&Postgres, Problem> {
        self.pg.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "prepared-transactions-disabled",
                "Prepared transactions are disabled",
            )
            .detail(format!(
                "this needs Postgres (prepared transactions): this service runs on SQLite {}",
                self.db.name()
            ))
            .with("setting", "max_prepared_transactions")
            .with("store", "sqlite")
        })
    }

    /// The Postgres pools for `what` (a feature that needs Postgres), or 503 `needs-postgres`
    /// naming it and the SQLite file.
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    pub fn postgres_for(&self, what: &str) -> Result<&Postgres, Problem> {
        self.pg.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "needs-postgres",
                "This needs Postgres",
            )
            .detail(format!(
                "{what} needs Postgres: this service runs on SQLite {}",
                self.db.name()
            ))
            .with("store", "sqlite")
        })
    }

    /// The service's routes, its saga endpoints, `/healthz`, the fault endpoints and the shared
    /// ones (`/noop`, `/stats`, 404).
    pub fn router(&self) -> Router {
        let own = (self.spec.routes)()
            .merge(crate::saga::routes(self))
            .merge(crate::participant::routes(self))
            .merge(crate::paxos::routes())
            .merge(crate::retention::routes())
            .merge(crate::three_phase::routes());
        let scrape = match &self.pg {
            Some(pg) => crate::metrics::Scrape::default()
                .pool("business", &pg.pool)
                .pool("control", &pg.control)
                .prepared_transactions(&pg.control),
            None => crate::metrics::Scrape::default(),
        };
        crate::http::finish_with(
            own.with_state(self.clone()).merge(self.faults.routes()),
            scrape,
            self.spec.name,
            &self.auth.guard(self.rules().iter()),
        )
    }

    /// This service's access table: the kit's routes, its saga endpoints, its own routes.
    pub fn rules(&self) -> Vec<Rule> {
        let saga = self
            .spec
            .actions
            .iter()
            .map(|a| a.path())
            .chain(self.spec.compensations.iter().map(|c| c.path))
            .map(|path| rule("POST", path, Access::Service));
        KIT_RULES
            .iter()
            .chain(crate::faults::ACCESS)
            .cloned()
            .chain(saga)
            .chain(self.spec.access.iter().cloned())
            .collect()
    }

    /// Default headers of this service's HTTP clients (sender and service token).
    pub fn client_headers(&self) -> axum::http::HeaderMap {
        self.auth.client_headers(&self.node)
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let addr = listener.local_addr().map_err(Error::Serve)?;
        self.auth.check_exposure(addr, self.spec.name)?;
        tracing::info!(%addr, faults = self.faults.enabled(), "{} listening", self.spec.name);
        let resolver = self.pg.is_some().then(|| {
            tokio::spawn(crate::participant::resolve_in_doubt(
                self.clone(),
                self.in_doubt_after,
            ))
        });
        let backstop = self
            .barrier_backstop
            .map(|age| tokio::spawn(crate::retention::backstop_loop(self.db.clone(), age)));
        let served = crate::http::serve(listener, self.router(), shutdown).await;
        if let Some(r) = resolver {
            r.abort();
        }
        if let Some(b) = backstop {
            b.abort();
        }
        served.map_err(Error::Serve)
    }
}

/// The whole `main` of a service binary: tracing, crash points, configuration, serve until
/// SIGINT/SIGTERM.
pub async fn main(spec: &'static Spec) -> Result<(), Error> {
    main_with(spec, None).await
}

/// [`main`], and with `step`, the service's part of the choreographed checkout when
/// `NATS_URL` is set (its outbox relay and durable consumer, see [`crate::choreo`]); without
/// `NATS_URL` the service serves saga calls and 2PC only.
pub async fn main_with(
    spec: &'static Spec,
    step: Option<&'static crate::choreo::step::Step>,
) -> Result<(), Error> {
    crate::http::init_tracing();
    crate::crash::init()?;
    let config = Config::parse(spec);
    let listener = crate::http::bind(config.listen_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen_addr,
            source,
        })?;
    let nats_url = config.nats_url.clone();
    let app = build(spec, config).await?;
    let _choreo = match (step, nats_url) {
        (Some(step), Some(url)) if !url.is_empty() => {
            if let Err(why) =
                app.postgres_for("the choreographed checkout (NATS_URL: its outbox relay)")
            {
                return Err(Error::Nats(why.detail.unwrap_or_default()));
            }
            let js = crate::choreo::connect(&url).await.map_err(Error::Nats)?;
            tracing::info!(%url, step = step.name, "choreographed checkout: relay and consumer on");
            Some(crate::choreo::step::Worker::start(app.clone(), step, js))
        }
        _ => None,
    };
    let served = app.run(listener, crate::http::shutdown_signal()).await;
    crate::telemetry::shutdown();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPEC: Spec = Spec {
        name: "example",
        about: "an example service",
        port: 8089,
        migrations: &Migrator::DEFAULT,
        sqlite_migrations: &Migrator::DEFAULT,
        actions: &[],
        compensations: &[],
        routes: crate::api::Api::new,
        access: &[],
    };

    /// Defect: fault injection was on by default, so any client of a production service could
    /// make it fail or stall.
    #[test]
    fn fault_injection_is_off_unless_asked_for() {
        assert_eq!(Config::with_database("x").fault_injection, Switch::Off);
        let on = Config::with_database("x").with_fault_injection(Switch::On);
        assert_eq!(on.fault_injection, Switch::On);
        let matches = Config::command(&SPEC)
            .try_get_matches_from(["example"])
            .unwrap();
        let parsed = Config::from_arg_matches(&matches).unwrap();
        if std::env::var_os("FAULT_INJECTION").is_none() {
            assert_eq!(parsed.fault_injection, Switch::Off);
        }
        assert_eq!(parsed.listen_addr.port(), 8089);
        assert!(parsed.database_url.ends_with("/tandem_example"));
        let help = Config::command(&SPEC).render_long_help().to_string();
        assert!(
            help.contains("FAULT_INJECTION") && help.contains("Off by default"),
            "{help}"
        );
    }
}
