//! Prometheus metrics for every Tandem process (the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`). One recorder per process ([`install`]); every server answers
//! `GET /metrics` with its text (mounted by [`crate::http::finish`]). What each metric means is in
//! docs/observability.md; the names are here, once, so code and docs agree.
//!
//! - HTTP: [`http_request`] (called by the kit's middleware for every route of every server,
//!   labelled by the matched route template — never a raw path — method and status).
//! - Gauges read at scrape time: the pools and the prepared transactions of the process
//!   ([`Scrape`]), so an idle process still reports them and nothing polls in between.
//! - [`acquire`] / [`begin`]: a pool connection (or transaction) with its wait timed (the
//!   business paths use these: the services' barrier, the orchestrator's saga creation).
//!
//! Labels are bounded: route templates, methods (unknown ones are `other`), status codes, saga
//! definition and step names (data the operator loads), pool names. No ids.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::{Method, header};
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;

/// Every HTTP request answered: a histogram, so its `_count` is the request counter.
pub const HTTP_REQUEST_DURATION: &str = "tandem_http_request_duration_seconds";
/// Connections of a pool by `state` (`idle`, `in_use`), at scrape time.
pub const DB_POOL_CONNECTIONS: &str = "tandem_db_pool_connections";
/// The pool's size limit.
pub const DB_POOL_MAX: &str = "tandem_db_pool_max_connections";
/// How long getting a connection from a pool took.
pub const DB_POOL_ACQUIRE: &str = "tandem_db_pool_acquire_duration_seconds";
/// Prepared transactions (2PC branches) of this service's database, at scrape time.
pub const PREPARED: &str = "tandem_prepared_transactions";
/// Age of the oldest of them (0 when there is none).
pub const PREPARED_OLDEST_AGE: &str = "tandem_prepared_transaction_oldest_age_seconds";

/// Latency buckets (seconds) of every `*_seconds` histogram: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the count histograms (`*_sagas`, batch sizes): powers of two up to 1024.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The switch: `TANDEM_METRICS=off` records nothing (no recorder is installed, so every
/// `metrics::` call is a no-op) and `/metrics` answers an empty text; `on` (the default)
/// records. Read once, outside clap like the OpenTelemetry variables, so every binary has it.
pub const SWITCH_VAR: &str = "TANDEM_METRICS";

/// Whether this process records metrics ([`SWITCH_VAR`]; anything but `off` is on).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var(SWITCH_VAR).map_or(true, |v| !v.trim().eq_ignore_ascii_case("off"))
    })
}

/// The process's recorder, installed on first use (metrics recorded before it are lost, so
/// every server installs it while building its router). Histograms are drained every 5 s by a
/// small thread, so an unscraped process does not grow. With metrics switched off
/// ([`enabled`]) the recorder is built but not installed: it stays empty.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_sagas".into()), COUNT_BUCKETS))
            .expect("buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if !enabled() {
            return handle;
        }
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed: /metrics shows only what this one records"
            );
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

/// What a server reports at scrape time besides its recorded metrics: its pools, and (a 2PC
/// participant) the prepared transactions of its database.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pools: Vec<(&'static str, PgPool)>,
    prepared: Option<PgPool>,
}

impl Scrape {
    /// Report `pool` in the role `role` (`business`, `control`: a process may have several
    /// pools on one database).
    pub fn pool(mut self, role: &'static str, pool: &PgPool) -> Self {
        self.pools.push((role, pool.clone()));
        self
    }

    /// Report this database's prepared transactions, read on `pool`.
    pub fn prepared_transactions(mut self, pool: &PgPool) -> Self {
        self.prepared = Some(pool.clone());
        self
    }

    /// `GET /metrics` added to `api`.
    pub fn route(self, api: crate::api::Api) -> crate::api::Api {
        install();
        api.route(
            "/metrics",
            crate::api::get("Prometheus metrics").answer_media(
                200,
                "the text exposition format (docs/observability.md)",
                "text/plain",
            ),
            move || {
                let scrape = self.clone();
                async move { scrape.render().await }
            },
        )
    }

    async fn sample(&self) {
        for (role, pool) in &self.pools {
            let db = database(pool);
            let size = pool.size();
            let idle = pool.num_idle() as u32;
            let gauge = |state: &'static str, v: u32| {
                metrics::gauge!(DB_POOL_CONNECTIONS, "database" => db.clone(), "pool" => *role, "state" => state)
                    .set(f64::from(v))
            };
            gauge("idle", idle);
            gauge("in_use", size.saturating_sub(idle));
            metrics::gauge!(DB_POOL_MAX, "database" => db.clone(), "pool" => *role)
                .set(f64::from(pool.options().get_max_connections()));
        }
        if let Some(pool) = &self.prepared {
            let read: Result<(i64, f64), _> = sqlx::query_as(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(prepared)), 0)::float8
                 FROM pg_prepared_xacts
                 WHERE database = current_database() AND gid LIKE 'tandem:%'",
            )
            .fetch_one(pool)
            .await;
            match read {
                Ok((n, oldest)) => {
                    metrics::gauge!(PREPARED).set(n as f64);
                    metrics::gauge!(PREPARED_OLDEST_AGE).set(oldest);
                }
                Err(e) => tracing::warn!(error = %e, "reading prepared transactions for /metrics"),
            }
        }
    }

    async fn render(&self) -> axum::response::Response {
        if enabled() {
            self.sample().await;
        }
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            install().render(),
        )
            .into_response()
    }
}

/// A request answered: `route` is the matched template (`/sagas/{id}`), or `unmatched`.
pub fn http_request(method: &Method, route: &str, status: u16, elapsed: Duration) {
    let method = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    metrics::histogram!(
        HTTP_REQUEST_DURATION,
        "method" => method,
        "route" => route.to_string(),
        "status" => status.to_string(),
    )
    .record(elapsed.as_secs_f64());
}

/// The database a pool connects to (the `database` label of pool metrics).
fn database(pool: &PgPool) -> String {
    pool.connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_string()
}

/// A connection from `pool`, the wait recorded in [`DB_POOL_ACQUIRE`].
pub async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let started = Instant::now();
    let conn = pool.acquire().await;
    metrics::histogram!(DB_POOL_ACQUIRE, "database" => database(pool))
        .record(started.elapsed().as_secs_f64());
    conn
}

/// A transaction on `pool`, the wait for its connection recorded in [`DB_POOL_ACQUIRE`].
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    sqlx::Transaction::begin(acquire(pool).await?, None).await
}
