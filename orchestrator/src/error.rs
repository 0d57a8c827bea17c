//! The orchestrator library's one error type. `main` wraps it in anyhow; the HTTP edge turns it
//! into an RFC 9457 problem ([`Problem::from`]).

use axum::http::StatusCode;
use tandem_kit::problem::{FieldIssue, Problem};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("running orchestrator migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Opening the pool (the kit's connect helper).
    #[error("connecting to the database: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("configuration: {0}")]
    Config(String),
    /// A definition file (built-in or `DEFINITIONS_DIR`) that cannot be loaded.
    #[error("{origin}: {message}")]
    DefinitionFile { origin: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Bad input, each field named by JSON Pointer (answered 422).
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldIssue>),
    #[error("{0}")]
    NotFound(String),
    /// A stored row that no longer decodes (a bug or a manual edit).
    #[error("stored {what} does not decode: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("saga {0} is busy on this instance")]
    Busy(Uuid),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// 422 naming one field.
    pub fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid(vec![FieldIssue {
            pointer: pointer.into(),
            message: message.into(),
        }])
    }
}

impl Error {
    /// 422 for problems found below `prefix` (e.g. an input's schema errors at `/input`).
    pub fn fields_at(prefix: &str, errors: Vec<crate::saga::FieldError>) -> Self {
        Error::Invalid(
            errors
                .into_iter()
                .map(|e| FieldIssue {
                    pointer: format!("{prefix}{}", e.pointer),
                    message: e.message,
                })
                .collect(),
        )
    }
}

fn describe(issues: &[FieldIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("{}: {}", i.pointer, i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(issues) => Problem::invalid_fields(issues),
            Error::NotFound(what) => Problem::not_found(what),
            Error::Busy(id) => Problem::new(StatusCode::CONFLICT, "busy", "Busy on this instance")
                .detail(format!("saga {id} is being driven on this instance")),
            Error::Db(e) => Problem::from(e),
            other => Problem::internal(other),
        }
    }
}
