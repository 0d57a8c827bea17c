//! Bearer tokens and roles, the same on every Tandem server (see docs/security.md).
//!
//! - Tokens come from configuration ([`AuthConfig`]): `TANDEM_TOKENS` (entries `role:token`
//!   separated by commas, spaces or newlines) and/or the file named by `TANDEM_TOKENS_FILE` (the
//!   same entries, one a line, `#` starts a comment). Roles: `client`, `operator`, `service`.
//!   Only SHA-256 digests are kept, and a presented token is compared with every configured
//!   one in constant time (`subtle`), so neither its content nor its length shows in timing.
//! - Every server has one table of [`Rule`]s next to its router: method, route template,
//!   [`Access`]. [`Guard`] (a layer added by [`crate::http::finish_with`]) looks the matched
//!   route up: a route with no rule answers 500 (`no-access-rule`) whether tokens are
//!   configured or not, so a route added without a rule fails every test that calls it; a
//!   method with no rule on a known route is a 405. Then: no or an unknown token → 401 with
//!   `WWW-Authenticate: Bearer`, a token whose role the rule does not admit → 403, both
//!   problem+json.
//! - Outgoing calls (the orchestrator to services, services to the coordinator, participants
//!   to acceptors, acceptors to the leader, the KV coordinator to shards) carry this process's
//!   own token: `TANDEM_SERVICE_TOKEN`, or else the first `service` token configured
//!   ([`Auth::client_headers`]).
//! - Without tokens a server runs open: allowed on a loopback address with a WARN line at
//!   start, refused on any other ([`Auth::check_exposure`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// The settings, also in every binary's `--help`.
pub const TOKENS_ENV: &str = "TANDEM_TOKENS";
pub const TOKENS_FILE_ENV: &str = "TANDEM_TOKENS_FILE";
pub const SERVICE_TOKEN_ENV: &str = "TANDEM_SERVICE_TOKEN";
/// Shortest token accepted (characters).
pub const MIN_TOKEN_LEN: usize = 16;

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Starts sagas and transactions and reads them.
    Client,
    /// Everything a client does, plus definitions, cancel / retry / resume, faults, stock
    /// seeding, metrics.
    Operator,
    /// Tandem's own processes calling each other.
    Service,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Service => "service",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "operator" => Some(Role::Operator),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (`/healthz`, the console's static files).
    Open,
    /// A client or an operator token.
    Client,
    /// An operator token.
    Operator,
    /// A service token (Tandem calling itself).
    Service,
    /// A service or an operator token (audit reads of protocol state).
    ServiceOrOperator,
}

impl Access {
    /// Whether a token of `role` may call a route needing `self`.
    pub fn admits(self, role: Role) -> bool {
        match self {
            Access::Open => true,
            Access::Client => matches!(role, Role::Client | Role::Operator),
            Access::Operator => role == Role::Operator,
            Access::Service => role == Role::Service,
            Access::ServiceOrOperator => matches!(role, Role::Service | Role::Operator),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Access::Open => "no token",
            Access::Client => "a client or operator token",
            Access::Operator => "an operator token",
            Access::Service => "a service token",
            Access::ServiceOrOperator => "a service or operator token",
        }
    }
}

/// One line of a server's access table: `method` (`GET`, `POST` …; `HEAD` follows `GET`) on
/// the route template `path` (as given to `Router::route`) needs `access`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    pub path: Cow<'static, str>,
    pub access: Access,
}

/// A rule for a fixed route (the tables are `&[Rule]` constants).
pub const fn rule(method: &'static str, path: &'static str, access: Access) -> Rule {
    Rule {
        method,
        path: Cow::Borrowed(path),
        access,
    }
}

/// The rules of the routes [`crate::http::finish_with`] adds to every server.
pub const SHARED_RULES: &[Rule] = &[
    rule("GET", "/metrics", Access::Operator),
    rule("GET", "/stats", Access::Operator),
    rule("POST", "/noop", Access::Service),
    // The API document and its page: what the server offers is no secret.
    rule("GET", "/openapi.json", Access::Open),
    rule("GET", "/docs", Access::Open),
];

/// Token settings, flattened into every binary's configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthConfig {
    /// Bearer tokens this server accepts: `role:token` entries (role `client`, `operator` or
    /// `service`; tokens of at least 16 characters) separated by commas, spaces or newlines.
    /// Unset (and no TANDEM_TOKENS_FILE): the server runs open, which it allows on a loopback
    /// address only. See docs/security.md.
    #[arg(long = "tokens", env = TOKENS_ENV, hide_env_values = true)]
    pub tokens: Option<String>,
    /// A file of `role:token` entries, one a line (`#` comments), read at start; added to
    /// TANDEM_TOKENS.
    #[arg(long = "tokens-file", env = TOKENS_FILE_ENV)]
    pub tokens_file: Option<PathBuf>,
    /// The token this process sends on its own calls to other Tandem servers. Default: the
    /// first `service` token of TANDEM_TOKENS / TANDEM_TOKENS_FILE.
    #[arg(long = "service-token", env = SERVICE_TOKEN_ENV, hide_env_values = true)]
    pub service_token: Option<String>,
}

impl AuthConfig {
    /// Tokens given as `(role, token)` pairs (tests, the in-process stack).
    pub fn with_tokens<'a>(pairs: impl IntoIterator<Item = (Role, &'a str)>) -> Self {
        let tokens = pairs
            .into_iter()
            .map(|(r, t)| format!("{}:{t}", r.name()))
            .collect::<Vec<_>>()
            .join(",");
        AuthConfig {
            tokens: Some(tokens),
            ..AuthConfig::default()
        }
    }
}

/// Why the token settings were refused (never contains a token).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The loaded settings: digests of the accepted tokens, and this process's outgoing token.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Auth(Arc<Inner>);

#[derive(Default)]
struct Inner {
    accepted: Vec<(Role, [u8; 32])>,
    outgoing: Option<HeaderValue>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.0.accepted.len())
            .field("outgoing", &self.0.outgoing.is_some())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// `role:token` entries of `text`, `source` naming where they came from in errors.
fn parse_entries(text: &str, source: &str) -> Result<Vec<(Role, String)>, ConfigError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for (i, entry) in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let Some((role, token)) = entry.split_once(':') else {
                return Err(ConfigError(format!(
                    "{source}: entry {} is not `role:token`",
                    i + 1
                )));
            };
            let Some(role) = Role::parse(role) else {
                return Err(ConfigError(format!(
                    "{source}: unknown role {role:?} (client, operator or service)"
                )));
            };
            check_token(token, source)?;
            out.push((role, token.to_string()));
        }
    }
    Ok(out)
}

fn check_token(token: &str, source: &str) -> Result<(), ConfigError> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(ConfigError(format!(
            "{source}: a token is shorter than {MIN_TOKEN_LEN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "{source}: a token has characters other than printable ASCII"
        )));
    }
    Ok(())
}

impl Auth {
    /// No tokens: the server runs open (see [`Auth::check_exposure`]).
    pub fn open() -> Self {
        Auth::default()
    }

    /// Load `config` (reading `TANDEM_TOKENS_FILE` if set).
    pub fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut entries = match &config.tokens {
            Some(t) => parse_entries(t, TOKENS_ENV)?,
            None => Vec::new(),
        };
        if let Some(path) = &config.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "{TOKENS_FILE_ENV}: reading {}: {e}",
                    path.display()
                ))
            })?;
            let source = format!("{TOKENS_FILE_ENV} ({})", path.display());
            entries.extend(parse_entries(&text, &source)?);
        }
        let outgoing = match &config.service_token {
            Some(t) if !t.is_empty() => {
                check_token(t, SERVICE_TOKEN_ENV)?;
                Some(t.clone())
            }
            _ => entries
                .iter()
                .find(|(r, _)| *r == Role::Service)
                .map(|(_, t)| t.clone()),
        };
        let outgoing = match outgoing {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| ConfigError(format!("{SERVICE_TOKEN_ENV}: not a header value")))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Auth(Arc::new(Inner {
            accepted: entries
                .iter()
                .map(|(r, t)| (*r, digest(t.as_bytes())))
                .collect(),
            outgoing,
        })))
    }

    /// True when no token is configured: every route is open.
    pub fn is_open(&self) -> bool {
        self.0.accepted.is_empty()
    }

    /// The role of the token `presented`, if it is one of ours. Every configured token is
    /// compared, each in constant time, whatever matches.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let d = digest(presented.as_bytes());
        let mut found = None;
        for (role, want) in &self.0.accepted {
            if bool::from(want.ct_eq(&d)) {
                found = Some(*role);
            }
        }
        found
    }

    /// The default headers of this process's HTTP clients: `Tandem-Sender: node` and, when a
    /// service token is configured, `Authorization: Bearer <it>`.
    pub fn client_headers(&self, node: &str) -> HeaderMap {
        let mut headers = crate::faults::sender_headers(node);
        if let Some(v) = &self.0.outgoing {
            headers.insert(header::AUTHORIZATION, v.clone());
        }
        headers
    }

    /// Refuse to serve open on a non-loopback address; on loopback, say loudly that it is
    /// open. `server` names the process in the message.
    pub fn check_exposure(&self, addr: SocketAddr, server: &str) -> Result<(), crate::Error> {
        if !self.is_open() {
            tracing::info!(
                tokens = self.0.accepted.len(),
                "{server}: bearer tokens required"
            );
            return Ok(());
        }
        if addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "{server} runs OPEN: no {TOKENS_ENV} or {TOKENS_FILE_ENV} is set, so anyone who \
                 can reach {addr} may call every route (allowed on loopback only; see docs/security.md)"
            );
            Ok(())
        } else {
            Err(crate::Error::Unprotected { addr })
        }
    }

    /// The guard of a server whose routes need what `rules` (plus [`SHARED_RULES`]) say.
    pub fn guard<'a>(&self, rules: impl IntoIterator<Item = &'a Rule>) -> Guard {
        let mut table: HashMap<String, Vec<(Method, Access)>> = HashMap::new();
        for r in rules.into_iter().chain(SHARED_RULES) {
            let method = Method::from_bytes(r.method.as_bytes()).unwrap_or(Method::GET);
            table
                .entry(r.path.to_string())
                .or_default()
                .push((method, r.access));
        }
        Guard(Arc::new(GuardInner {
            auth: self.clone(),
            table,
        }))
    }
}

/// A server's access table with its tokens; [`Guard::layer`] puts it in front of the routes.
#[derive(Clone, Debug)]
pub struct Guard(Arc<GuardInner>);

#[derive(Debug)]
struct GuardInner {
    auth: Auth,
    table: HashMap<String, Vec<(Method, Access)>>,
}

impl Guard {
    /// The guard of a server with no tokens and `rules` (tests of the table itself).
    pub fn open<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Guard {
        Auth::open().guard(rules)
    }

    /// `router` with the check in front of every route it has now.
    pub fn layer(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), check))
    }

    /// What the table says `method` on the route template `path` needs (`None`: no rule).
    pub fn access(&self, method: &Method, path: &str) -> Option<Access> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.0
            .table
            .get(path)?
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, a)| *a)
    }

    /// 405 for a method the table has no rule for on `path`, with `Allow` listing those it has.
    fn method_not_allowed(&self, path: &str) -> Response {
        let mut allowed: Vec<&str> = self
            .0
            .table
            .get(path)
            .into_iter()
            .flatten()
            .map(|(m, _)| m.as_str())
            .collect();
        if allowed.contains(&"GET") {
            allowed.push("HEAD");
        }
        let mut resp = crate::http::method_not_allowed().into_response();
        if let Ok(v) = HeaderValue::from_str(&allowed.join(",")) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        resp
    }

    /// Whether the table has any rule for the route template `path`.
    pub fn knows(&self, path: &str) -> bool {
        self.0.table.contains_key(path)
    }

    /// The auth settings behind this guard.
    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }
}

/// The bearer token of `headers` (`Authorization: Bearer <token>`, scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(detail: &str, error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"tandem\", error=\"{e}\""),
        None => "Bearer realm=\"tandem\"".to_string(),
    };
    let mut resp = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
        .detail(detail)
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

async fn check(
    State(guard): State<Guard>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    // Unmatched: the 404 fallback answers (it reveals nothing and does nothing).
    let Some(matched) = matched else {
        return next.run(req).await;
    };
    let route = matched.as_str();
    let access = match guard.access(req.method(), route) {
        Some(a) => a,
        None if guard.knows(route) => return guard.method_not_allowed(route),
        None => {
            tracing::error!(%route, method = %req.method(), "route has no access rule: refused");
            let mut p = Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no-access-rule",
                "Route without an access rule",
            )
            .detail("this route has no entry in the server's access table, so it is refused");
            p.cause = Some(format!("{} {route} has no access rule", req.method()));
            return p.into_response();
        }
    };
    if access == Access::Open || guard.0.auth.is_open() {
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()) else {
        return unauthorized(
            &format!(
                "this route needs {}: send `Authorization: Bearer <token>`",
                access.describe()
            ),
            None,
        );
    };
    match guard.0.auth.role_of(token) {
        None => unauthorized(
            "the bearer token is not one of this server's",
            Some("invalid_token"),
        ),
        Some(role) if access.admits(role) => next.run(req).await,
        Some(role) => Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .detail(format!(
                "this route needs {}; the token presented is a {} token",
                access.describe(),
                role.name()
            ))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    const CLIENT: &str = "client-token-0123456789";
    const OPERATOR: &str = "operator-token-0123456789";
    const SERVICE: &str = "service-token-0123456789";

    fn auth() -> Auth {
        Auth::load(&AuthConfig::with_tokens([
            (Role::Client, CLIENT),
            (Role::Operator, OPERATOR),
            (Role::Service, SERVICE),
        ]))
        .unwrap()
    }

    const RULES: &[Rule] = &[
        rule("GET", "/open", Access::Open),
        rule("POST", "/things", Access::Client),
        rule("GET", "/things", Access::Client),
        rule("POST", "/admin", Access::Operator),
        rule("POST", "/internal", Access::Service),
    ];

    fn app(guard: &Guard) -> Router {
        use crate::api::{self, Api};
        let ok = || async { "ok" };
        let r = Api::new()
            .route("/open", api::get("open"), ok)
            .route("/open", api::post("open"), ok)
            .route("/things", api::get("list"), ok)
            .route("/things", api::post("add"), ok)
            .route("/admin", api::post("admin"), ok)
            .route("/internal", api::post("internal"), ok)
            .route("/forgotten", api::get("no rule"), ok);
        crate::http::finish_with(r, crate::metrics::Scrape::default(), "test", guard)
    }

    async fn call(app: &Router, method: &str, uri: &str, token: Option<&str>) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[test]
    fn entries_parse_and_bad_ones_are_named_without_the_token() {
        let a = Auth::load(&AuthConfig {
            tokens: Some(format!(
                "client:{CLIENT}, operator:{OPERATOR}\nservice:{SERVICE}"
            )),
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(a.role_of(CLIENT), Some(Role::Client));
        assert_eq!(a.role_of(OPERATOR), Some(Role::Operator));
        assert_eq!(a.role_of(SERVICE), Some(Role::Service));
        assert_eq!(a.role_of("service-token-012345678"), None);
        assert_eq!(a.role_of(""), None);
        for (bad, says) in [
            ("admin:0123456789abcdefgh", "unknown role"),
            ("client:short", "shorter than 16"),
            ("0123456789abcdefgh", "not `role:token`"),
        ] {
            let e = Auth::load(&AuthConfig {
                tokens: Some(bad.into()),
                ..AuthConfig::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(says) && e.contains(TOKENS_ENV), "{e}");
            assert!(!e.contains("0123456789abcdefgh"), "a token leaked: {e}");
        }
    }

    #[test]
    fn a_tokens_file_adds_entries_and_comments_are_ignored() {
        let dir = std::env::temp_dir().join(format!("tandem-auth-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(
            &path,
            format!("# the operators\noperator:{OPERATOR}  # alice\n\n"),
        )
        .unwrap();
        let a = Auth::load(&AuthConfig {
            tokens: Some(format!("client:{CLIENT}")),
            tokens_file: Some(path.clone()),
            service_token: None,
        })
        .unwrap();
        assert_eq!(a.role_of(OPERATOR), Some(Role::Operator));
        assert_eq!(a.role_of(CLIENT), Some(Role::Client));
        assert!(a.client_headers("x").get(header::AUTHORIZATION).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = Auth::load(&AuthConfig {
            tokens_file: Some(path),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(missing.to_string().contains(TOKENS_FILE_ENV), "{missing}");
    }

    #[test]
    fn outgoing_calls_carry_the_service_token() {
        let h = auth().client_headers("orchestrator");
        assert_eq!(h["authorization"], format!("Bearer {SERVICE}").as_str());
        assert_eq!(h[crate::faults::SENDER_HEADER], "orchestrator");
        let own = Auth::load(&AuthConfig {
            service_token: Some("another-service-token".into()),
            ..AuthConfig::with_tokens([(Role::Service, SERVICE)])
        })
        .unwrap();
        assert_eq!(
            own.client_headers("x")["authorization"],
            "Bearer another-service-token"
        );
        assert!(
            Auth::open()
                .client_headers("x")
                .get("authorization")
                .is_none()
        );
    }

    #[test]
    fn open_only_on_loopback() {
        let open = Auth::open();
        assert!(
            open.check_exposure("127.0.0.1:1".parse().unwrap(), "t")
                .is_ok()
        );
        assert!(open.check_exposure("[::1]:1".parse().unwrap(), "t").is_ok());
        let e = open
            .check_exposure("0.0.0.0:1".parse().unwrap(), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains(TOKENS_ENV) && e.contains("0.0.0.0:1"), "{e}");
        assert!(
            auth()
                .check_exposure("0.0.0.0:1".parse().unwrap(), "t")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn each_route_admits_its_roles_only() {
        let app = app(&auth().guard(RULES));
        let status = |r: &Response| r.status().as_u16();
        for (method, uri, token, want) in [
            ("GET", "/open", None, 200),
            ("GET", "/things", None, 401),
            ("GET", "/things", Some("not-a-token-of-ours-000"), 401),
            ("GET", "/things", Some(CLIENT), 200),
            ("HEAD", "/things", Some(CLIENT), 200),
            ("POST", "/things", Some(OPERATOR), 200),
            ("POST", "/things", Some(SERVICE), 403),
            ("POST", "/admin", Some(CLIENT), 403),
            ("POST", "/admin", Some(OPERATOR), 200),
            ("POST", "/internal", Some(OPERATOR), 403),
            ("POST", "/internal", Some(SERVICE), 200),
            ("GET", "/metrics", Some(CLIENT), 403),
            ("GET", "/metrics", Some(OPERATOR), 200),
            ("DELETE", "/things", Some(OPERATOR), 405),
            // routed, but the table has no rule for this method: refused by the guard
            ("POST", "/open", Some(OPERATOR), 405),
            ("GET", "/nowhere", None, 404),
            ("GET", "/forgotten", Some(OPERATOR), 500),
        ] {
            let r = call(&app, method, uri, token).await;
            assert_eq!(status(&r), want, "{method} {uri} with {token:?}");
            if want >= 400 {
                assert_eq!(
                    r.headers()[header::CONTENT_TYPE],
                    "application/problem+json",
                    "{method} {uri}"
                );
            }
            if want == 405 {
                let mut allow: Vec<&str> = r.headers()[header::ALLOW]
                    .to_str()
                    .unwrap()
                    .split(',')
                    .collect();
                allow.sort_unstable();
                let want: &[&str] = if uri == "/open" {
                    &["GET", "HEAD"]
                } else {
                    &["GET", "HEAD", "POST"]
                };
                assert_eq!(allow, want, "{method} {uri}");
            }
            if want == 401 {
                let challenge = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
                assert!(challenge.starts_with("Bearer"), "{challenge}");
            }
        }
    }

    /// Without tokens everything is open — except a route with no rule, which is refused
    /// either way, so a route added without a rule fails the first test that calls it.
    #[tokio::test]
    async fn open_servers_still_refuse_routes_without_a_rule() {
        let app = app(&Guard::open(RULES));
        assert_eq!(call(&app, "POST", "/admin", None).await.status(), 200);
        assert_eq!(call(&app, "POST", "/internal", None).await.status(), 200);
        assert_eq!(call(&app, "GET", "/forgotten", None).await.status(), 500);
    }
}
