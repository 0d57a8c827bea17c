//! HTTP plumbing every Tandem server shares: extractors whose rejections are problem+json,
//! the 404 / 405 fallbacks, the body limit, and `serve`.
//!
//! - [`Json`] accepts `application/json` (or `*+json`) only: wrong or missing content type → 415,
//!   a body over the limit → 413, bad syntax → 400, a well-formed body of the wrong shape → 422
//!   naming the field by JSON Pointer (`/items/0/quantity`). A number written as an integral
//!   float (`5.0`) is taken as that integer ([`integral_floats_to_integers`]), as the documents'
//!   JSON Schema `integer` says.
//! - [`Path`] and [`Query`] wrap axum's, turning their rejections into 400 / 422 problems.
//! - Postgres stores no NUL character (`\u0000`) in `text` or `jsonb`: every string these
//!   extractors hand out — body values and object keys, query and path parameters — is
//!   checked once here, and one with a NUL is a 422 naming it (`/items/0/sku`,
//!   `/query/order_id`, `/path/sku`), so it never reaches the database as a 500.
//! - [`finish`] adds the fallbacks, the body limit and request tracing and metrics ([`observe`])
//!   to a router, plus `GET /metrics` (see [`crate::metrics`]), `GET /stats` (see [`crate::stats`]) and `POST /noop` (a no-op saga step for benchmarks).

use std::future::Future;

use axum::Router;

use crate::api::Api;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// JSON body extractor and response type with problem+json rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("expected a request body with `Content-Type: application/json`"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Payload too large",
                )
                .detail(format!("the request body exceeds {BODY_LIMIT_BYTES} bytes"))
            } else {
                Problem::bad_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parse a JSON body: syntax errors are 400, shape errors 422 with a JSON Pointer.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // First, syntax: anything that is not JSON at all is a malformed request.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if let Some(pointer) = nul_in(&value, String::new()) {
        return Err(Problem::invalid(pointer, NUL_MESSAGE));
    }
    let mut value = value;
    integral_floats_to_integers(&mut value);
    from_value(value)
}

/// Rewrite every number written as an integral float (`5.0`, `1e3`) that an `i64` or `u64`
/// holds exactly as that integer, in place. JSON Schema's `integer` — what every document
/// says of an integer field — admits `5.0` (it is the number 5), and serde's integer types
/// refuse a float: with this, what a document admits the handler takes, on every server and
/// in hand-checked `Value` bodies alike. A JSON number is its value, so `5.0` and `5` are also
/// one body to the idempotency checks, and an opaque value (a saga's input) is kept as `5`.
/// Fractions, and integral floats beyond the integer types (`1e300`), stay floats.
pub fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                // `as` saturates: the range checks make the conversions exact.
                if (-(2f64.powi(63))..2f64.powi(63)).contains(&f) {
                    *value = Value::from(f as i64);
                } else if (0.0..2f64.powi(64)).contains(&f) {
                    *value = Value::from(f as u64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(members) => members.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// What a field with a NUL character is told.
pub const NUL_MESSAGE: &str = "must not contain the character U+0000 (NUL)";

/// The JSON Pointer of the first string or object key in `value` that contains a NUL
/// character (a key names its member), if any.
pub fn nul_in(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, format!("{at}/{i}"))),
        Value::Object(members) => members.iter().find_map(|(k, v)| {
            let here = format!("{at}/{}", escape_pointer_token(k));
            if k.contains('\0') {
                Some(here)
            } else {
                nul_in(v, here)
            }
        }),
        _ => None,
    }
}

/// 422 for the first `(name, value)` pair with a NUL character, named `/{part}/{name}`.
#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn refuse_nul<'a>(
    part: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Problem> {
    match pairs
        .into_iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        Some((name, _)) => Err(Problem::invalid(
            format!("/{part}/{}", escape_pointer_token(name)),
            NUL_MESSAGE,
        )),
        None => Ok(()),
    }
}

/// Deserialize a parsed JSON value into `T`; errors are 422 naming the field.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut pointer = path_to_pointer(e.path());
        let message = e.inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            pointer.push('/');
            pointer.push_str(&escape_pointer_token(field));
            return Problem::invalid(pointer, "is required");
        }
        Problem::invalid(pointer, message)
    })
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&escape_pointer_token(key));
            }
            Segment::Enum { variant } => {
                out.push('/');
                out.push_str(&escape_pointer_token(variant));
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Escape one reference token of a JSON Pointer (RFC 6901).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path extractor with problem+json rejections; a parameter with a NUL is a 422 naming
/// `/path/<name>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await {
            refuse_nul("path", &raw)?;
        }
        let axum::extract::Path(value) =
            axum::extract::Path::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// Query-string extractor with problem+json rejections; a parameter with a NUL (name or
/// value) is a 422 naming `/query/<name>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        if let Ok(axum::extract::Query(pairs)) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        {
            refuse_nul("query", pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        }
        let axum::extract::Query(value) = axum::extract::Query::try_from_uri(&parts.uri)?;
        Ok(Query(value))
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-path",
            "Invalid path parameter",
        )
        .detail(r.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Self {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-query",
            "Invalid query string",
        )
        .detail(r.body_text())
    }
}

async fn not_found() -> Problem {
    Problem::not_found("no such route")
}

/// The routes every server shares: `GET /stats`, `POST /noop`.
fn shared(api: Api) -> Api {
    api.route(
        "/stats",
        crate::api::get("Counters of this process")
            .describe("write / read transactions per database, prepared transactions, 2PC messages by kind, memory (used by `tandem bench`)")
            .answer_schema(200, "the counters", crate::api::object()),
        crate::stats::handler,
    )
    .route(
        "/noop",
        crate::api::post("A saga step with no effect (benchmarks)")
            .header_schema(
                "Idempotency-Key",
                "`{run}:{step}:{action|compensation}`",
                true,
                crate::barrier::IdempotencyKey::schema(None),
            )
            .answer_schema(200, "`{\"ok\": true, \"op\"}`", crate::api::object()),
        noop,
    )
}

/// `POST /noop`: a saga step with no effect and no database access (DTM's "empty branch"), for
/// benchmarking the orchestrator alone. It still requires a well-formed `Idempotency-Key`.
async fn noop(key: crate::barrier::IdempotencyKey) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "ok": true, "op": key.op }))
}

/// 405: the route exists but not with this method.
pub fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
    )
    .detail("this route exists but does not accept that method")
}

/// The router of server `title` from its route table: the problem+json 404/405 fallbacks, the
/// body limit, request tracing and metrics ([`observe`]), plus `GET /metrics`, `GET /stats`,
/// `POST /noop`, and its OpenAPI document at `GET /openapi.json` and `GET /docs`
/// ([`crate::api`]); every route behind `guard` (tokens and the server's access table, see
/// [`crate::auth`]).
pub fn finish(api: Api, title: &str, guard: &crate::auth::Guard) -> Router {
    finish_with(api, crate::metrics::Scrape::default(), title, guard)
}

/// [`finish`], with what `/metrics` reads at scrape time (the server's pools …).
pub fn finish_with(
    api: Api,
    scrape: crate::metrics::Scrape,
    title: &str,
    guard: &crate::auth::Guard,
) -> Router {
    let (router, _) = shared(scrape.route(api)).finish(title);
    // The guard runs inside `observe`, so refusals are traced and measured like any answer.
    guard
        .layer(router)
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn(observe))
}

/// Around every request of every server: a span that continues the caller's `traceparent`,
/// and the request's latency in [`crate::metrics::HTTP_REQUEST_DURATION`] under its route
/// template (`unmatched` for the 404 fallback), so new routes are measured and traced with no
/// code of their own. Every request is also counted by route ([`crate::stats::exchange`]): the
/// messages of every protocol, counted in one place. The handler runs in the request's hop clock
/// ([`crate::hop::serve`]: from its `Tandem-Hop`, 0 for a client's) and the answer carries the
/// clock at its end plus one: every protocol's message delays, measured in one place.
pub async fn observe(
    matched: Option<axum::extract::MatchedPath>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let route = matched
        .as_ref()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().clone();
    crate::stats::exchange(&method, &route);
    let span = crate::telemetry::server_span(&method, &route, req.headers());
    let started = std::time::Instant::now();
    let incoming = crate::hop::of(req.headers());
    let (mut resp, hops) =
        crate::hop::serve(incoming, next.run(req).instrument(span.clone())).await;
    resp.headers_mut()
        // `saturating_add`: a client may send any u32 (`Tandem-Hop: 4294967295`).
        .insert(
            crate::hop::HEADER,
            axum::http::HeaderValue::from(hops.saturating_add(1)),
        );
    let status = resp.status().as_u16();
    span.record("status", status);
    crate::metrics::http_request(&method, &route, status, started.elapsed());
    resp
}

/// Pending connections the kernel queues for a listener before it drops new SYNs.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bind a listener with a deep accept queue ([`LISTEN_BACKLOG`], capped by the kernel's
/// `net.core.somaxconn`). With the default of 128, a burst of new connections while the
/// process was short of CPU overflowed the queue: the kernel dropped SYNs, and each dropped one
/// cost its caller a 1 s retransmission (seen as 1–2 s saga steps in the benchmark at 64
/// clients, `TcpExtListenOverflows` in `nstat`).
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve `router` on `listener` until `shutdown` completes (then drain in-flight requests).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGINT or SIGTERM: the usual `shutdown` argument of a binary's `run`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Install the tracing subscriber (`RUST_LOG`, default `info`) with OpenTelemetry spans named
/// after the binary (see [`crate::telemetry::init`]).
pub fn init_tracing() {
    let exe = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&exe)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("tandem")
        .to_string();
    crate::telemetry::init(&name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        quantity: u32,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        order_id: String,
        items: Vec<Item>,
    }

    #[test]
    fn shape_errors_name_the_field() {
        let p = parse_json::<Body>(br#"{"order_id":"o","items":[{"sku":"a","quantity":-1}]}"#)
            .unwrap_err();
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.errors[0].pointer, "/items/0/quantity");
        let p = parse_json::<Body>(br#"{"items":[]}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/order_id");
        let p = parse_json::<Body>(br#"{"order_id":"o","items":[{"sku":"a"}]}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/items/0/quantity");
    }

    #[test]
    fn a_nul_anywhere_is_422_naming_it() {
        for (body, pointer) in [
            (&br#"{"order_id":"a\u0000b","items":[]}"#[..], "/order_id"),
            (
                br#"{"order_id":"o","items":[{"sku":"\u0000","quantity":1}]}"#,
                "/items/0/sku",
            ),
            (
                br#"{"order_id":"o","items":[],"x":{"k\u0000/":1}}"#,
                "/x/k\u{0}~1",
            ),
            (br#"["\u0000"]"#, "/0"),
        ] {
            let p = parse_json::<serde_json::Value>(body).unwrap_err();
            assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
            assert_eq!(p.errors[0].pointer, pointer);
            assert_eq!(p.errors[0].message, NUL_MESSAGE);
        }
        assert!(parse_json::<serde_json::Value>(br#"{"a":"\u0001 is fine here"}"#).is_ok());
    }

    #[tokio::test]
    async fn a_nul_in_a_query_or_path_parameter_is_422_naming_it() {
        use axum::routing::get;
        use tower::ServiceExt;
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Q {
            order_id: Option<String>,
        }
        let app = Router::new()
            .route("/q", get(|Query(_): Query<Q>| async { "ok" }))
            .route("/p/{sku}", get(|Path(_): Path<String>| async { "ok" }));
        for (uri, want) in [
            ("/q?order_id=%00", Some("/query/order_id")),
            ("/q?order_id=a%00b", Some("/query/order_id")),
            ("/q?x%00=1", Some("/query/x\u{0}")),
            ("/p/a%00", Some("/path/sku")),
            ("/q?order_id=fine", None),
            ("/p/fine", None),
        ] {
            let req = Request::get(uri).body(axum::body::Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            match want {
                None => assert_eq!(resp.status(), StatusCode::OK, "{uri}"),
                Some(pointer) => {
                    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
                    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                        .await
                        .unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["errors"][0]["pointer"], pointer, "{uri}: {v}");
                }
            }
        }
    }

    #[tokio::test]
    async fn every_answer_carries_the_request_s_hop_count_plus_its_handler_s() {
        use axum::routing::get;
        use tower::ServiceExt;
        // A handler that heard an answer at hop 5 (as `hop::send` records it).
        let app = Router::new()
            .route(
                "/seen",
                get(|| async { crate::hop::now().unwrap().to_string() }),
            )
            .route(
                "/calls",
                get(|| async {
                    crate::hop::witness(5);
                    "ok"
                }),
            )
            .layer(axum::middleware::from_fn(observe));
        for (uri, hop, body, answer) in [
            ("/seen", Some("3"), "3", "4"),
            ("/seen", None, "0", "1"),
            ("/calls", Some("1"), "ok", "6"),
            // the largest count a client can send, and a malformed one (ignored: a root)
            ("/seen", Some("4294967295"), "4294967295", "4294967295"),
            ("/seen", Some("x"), "0", "1"),
        ] {
            let mut req = Request::get(uri);
            if let Some(h) = hop {
                req = req.header(crate::hop::HEADER, h);
            }
            let resp = app
                .clone()
                .oneshot(req.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.headers()[crate::hop::HEADER], answer, "{uri} {hop:?}");
            let got = axum::body::to_bytes(resp.into_body(), 1 << 10)
                .await
                .unwrap();
            assert_eq!(got, body.as_bytes(), "{uri} {hop:?}");
        }
    }

    /// What the documents' `integer` admits, the handlers take: `5.0` is 5 (in typed fields,
    /// nested ones and opaque values); a fraction or an integral float no integer type holds is
    /// still refused where an integer is wanted.
    #[test]
    fn integral_floats_are_integers() {
        let b = parse_json::<Body>(
            br#"{"order_id":"o","items":[{"sku":"a","quantity":5.0},{"sku":"b","quantity":2e1}]}"#,
        )
        .unwrap();
        assert_eq!(b.items[0].quantity, 5);
        assert_eq!(b.items[1].quantity, 20);
        let v = parse_json::<serde_json::Value>(
            br#"{"a":-0.0,"b":[1.0,1.5],"c":{"d":-9007199254740992.0},"e":1e+300,"f":1.8446744073709552e+19}"#,
        )
        .unwrap();
        assert_eq!(
            v.to_string(),
            r#"{"a":0,"b":[1,1.5],"c":{"d":-9007199254740992},"e":1e+300,"f":1.8446744073709552e+19}"#
        );
        assert_eq!(
            parse_json::<serde_json::Value>(br#"[9.223372036854776e18]"#)
                .unwrap()
                .to_string(),
            "[9223372036854775808]"
        );
        let p = parse_json::<Body>(br#"{"order_id":"o","items":[{"sku":"a","quantity":1.5}]}"#)
            .unwrap_err();
        assert_eq!(p.errors[0].pointer, "/items/0/quantity");
        let p = parse_json::<Body>(br#"{"order_id":"o","items":[{"sku":"a","quantity":1e300}]}"#)
            .unwrap_err();
        assert_eq!(p.errors[0].pointer, "/items/0/quantity");
    }

    #[test]
    fn syntax_errors_are_400() {
        let p = parse_json::<Body>(b"{nope").unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
    }
}
