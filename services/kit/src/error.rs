//! The kit's one error type, for what can fail outside a request: starting a service
//! (connecting, migrating, binding) and serving. Requests answer [`crate::Problem`]s instead.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the database")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("applying the {service} migrations")]
    Migrate {
        service: &'static str,
        #[source]
        source: Box<crate::db::MigrateFailed>,
    },
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// No tokens configured and a non-loopback address (see [`crate::auth`]).
    #[error(
        "refusing to serve on {addr} without bearer tokens: set TANDEM_TOKENS or \
         TANDEM_TOKENS_FILE (see docs/security.md), or listen on a loopback address"
    )]
    Unprotected { addr: SocketAddr },
    /// TANDEM_TOKENS / TANDEM_TOKENS_FILE / TANDEM_SERVICE_TOKEN refused.
    #[error("token settings: {0}")]
    Tokens(#[from] crate::auth::ConfigError),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("{0}")]
    CrashPoints(String),
    /// NATS unreachable, or its JetStream streams could not be made (choreography).
    #[error("{0}")]
    Nats(String),
    /// A provisioning plan that cannot run as given.
    #[error("provisioning: {0}")]
    Provision(String),
    #[error("recovering 2PC branches at start-up: {0}")]
    Recovery(String),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("invalid database URL {url:?}")]
    DatabaseUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// A database operation that says what it was doing (`creating database x`, …).
    #[error("{what}")]
    Sql {
        what: String,
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// `source`, labelled with what was being done.
    pub fn sql(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let what = what.into();
        move |source| Error::Sql { what, source }
    }

    /// The database error underneath, if any.
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Database(e)
            | Error::DatabaseUrl { source: e, .. }
            | Error::Sql { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// `e` and its sources, `: `-separated (what a log line or a stored message shows of an error).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
