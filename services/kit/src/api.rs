//! One route table per server that builds both its axum router and its OpenAPI 3.1 document, so
//! the two cannot drift: a route is added with [`Api::route`] and an [`Op`] that documents it
//! (summary, parameters, request body, answers, errors), and nowhere else. The document is
//! served at `GET /openapi.json` and rendered at `GET /docs` (a small page of our own, no
//! assets fetched) by [`crate::http::finish_with`].
//!
//! What every operation shares is written once here: the `application/problem+json` schema
//! ([`PROBLEM`]) and the common error answers (`#/components/responses/…`): 400, 404, 405, 422
//! and 503 for every operation, 413 and 415 for those that take a body; an operation adds its
//! own (409, 425, …) with [`Op::error`]. Path parameters are documented from the template
//! (`{id}`); query parameters from an `IntoParams` type ([`Op::query`]).
//!
//! `tandem_kit::testing::assert_documented` checks a running server against its document.

use std::collections::BTreeMap;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};
use serde_json::{Value, json};
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Components, Schema};
use utoipa::openapi::{Content, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr, Required};
use utoipa::{IntoParams, ToSchema};

/// The name of the problem+json schema under `#/components/schemas`.
pub const PROBLEM: &str = "Problem";

/// Common error answers: (status, description), each a `#/components/responses/<status>`.
const COMMON_ERRORS: [(u16, &str); 5] = [
    (400, "malformed request (JSON syntax, path parameter)"),
    (404, "no such resource"),
    (405, "method not allowed on this route"),
    (
        422,
        "invalid input: `errors` names each field by JSON Pointer",
    ),
    (503, "unavailable (database, lock wait: see `Retry-After`)"),
];

/// More common answers of operations that take a JSON body.
const BODY_ERRORS: [(u16, &str); 2] = [
    (413, "body over 256 KiB"),
    (415, "body is not `application/json`"),
];

/// One operation: how a route is documented.
#[derive(Debug, Clone)]
pub struct Op {
    method: HttpMethod,
    summary: String,
    description: Option<String>,
    query: Vec<utoipa::openapi::path::Parameter>,
    path_uuid: bool,
    /// Path parameters whose handler enforces more than the default schema.
    path_schemas: Vec<(String, Value)>,
    /// Name, description, required, schema.
    headers: Vec<(String, String, bool, serde_json::Value)>,
    body: Option<RefOr<Schema>>,
    /// A body schema kept as written ([`Op::body_json`]).
    raw_body: Option<Value>,
    answers: Vec<(u16, String, Answer)>,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// What a documented answer carries.
#[derive(Debug, Clone)]
enum Answer {
    /// `application/json` with this schema.
    Json(Box<RefOr<Schema>>),
    /// `application/problem+json`.
    Problem,
    /// Another media type (HTML, JavaScript, Prometheus text …), a string.
    Media(&'static str),
    /// No body (a redirect).
    Empty,
}

/// `GET path`, summarised.
pub fn get(summary: &str) -> Op {
    Op::new(HttpMethod::Get, summary)
}

/// `POST path`, summarised.
pub fn post(summary: &str) -> Op {
    Op::new(HttpMethod::Post, summary)
}

/// `PUT path`, summarised.
pub fn put(summary: &str) -> Op {
    Op::new(HttpMethod::Put, summary)
}

/// `DELETE path`, summarised.
pub fn delete(summary: &str) -> Op {
    Op::new(HttpMethod::Delete, summary)
}

/// Any JSON object: the schema of answers whose shape the prose describes.
pub fn object() -> RefOr<Schema> {
    schema(json!({"type": "object"}))
}

/// A schema written as JSON Schema (for bodies read as `serde_json::Value` and checked by
/// hand).
///
/// # Panics
/// If `v` is not a schema utoipa can represent (a programming error, caught by every test that
/// builds a router).
pub fn schema(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a JSON Schema utoipa can represent")
}

impl Op {
    fn new(method: HttpMethod, summary: &str) -> Self {
        Op {
            method,
            summary: summary.to_string(),
            description: None,
            query: Vec::new(),
            path_uuid: false,
            path_schemas: Vec::new(),
            headers: Vec::new(),
            body: None,
            raw_body: None,
            answers: Vec::new(),
            schemas: Vec::new(),
        }
    }

    /// A longer description (Markdown).
    pub fn describe(mut self, text: &str) -> Self {
        self.description = Some(text.to_string());
        self
    }

    /// Query parameters, from the handler's `Query` type. A string parameter without a
    /// pattern, format or enum of its own is documented without U+0000, as
    /// [`crate::http::Query`] refuses it (422).
    pub fn query<Q: IntoParams>(mut self) -> Self {
        self.query = Q::into_params(|| Some(ParameterIn::Query))
            .into_iter()
            .map(|p| {
                let mut v = serde_json::to_value(&p).expect("a parameter serializes");
                if let Some(s) = v.get_mut("schema").and_then(Value::as_object_mut) {
                    let plain_string = s.get("type") == Some(&json!("string"))
                        && !["pattern", "format", "enum"]
                            .iter()
                            .any(|k| s.contains_key(*k));
                    if plain_string {
                        s.insert("pattern".into(), json!(NO_NUL));
                    }
                }
                serde_json::from_value(v).expect("a parameter utoipa reads back")
            })
            .collect();
        self
    }

    /// The path parameters are UUIDs (they are strings otherwise).
    pub fn path_uuid(mut self) -> Self {
        self.path_uuid = true;
        self
    }

    /// Path parameter `name` has this schema (what its handler enforces: a length, a
    /// pattern …) instead of the default (a non-empty string without U+0000).
    pub fn path_schema(mut self, name: &str, schema: Value) -> Self {
        self.path_schemas.push((name.to_string(), schema));
        self
    }

    /// An optional request header.
    pub fn header(self, name: &str, description: &str) -> Self {
        self.header_schema(name, description, false, json!({"type": "string"}))
    }

    /// A required request header.
    pub fn required_header(self, name: &str, description: &str) -> Self {
        self.header_schema(name, description, true, json!({"type": "string"}))
    }

    /// A request header with the schema its handler enforces (a `pattern`, a `maxLength` …),
    /// so a client — or a fuzzer — knows which values are accepted.
    pub fn header_schema(
        mut self,
        name: &str,
        description: &str,
        required: bool,
        schema: serde_json::Value,
    ) -> Self {
        self.headers
            .push((name.to_string(), description.to_string(), required, schema));
        self
    }

    /// A required JSON body of type `T` (its schema and those it names go to the components).
    pub fn body<T: ToSchema>(mut self) -> Self {
        self.body = Some(self.component::<T>());
        self
    }

    /// A required JSON body with this schema ([`schema`]).
    pub fn body_schema(mut self, schema: RefOr<Schema>) -> Self {
        self.body = Some(schema);
        self
    }

    /// A required JSON body with this JSON Schema, served as written (a component of its own,
    /// `<operationId>Body`): for what utoipa's schema model does not carry (`prefixItems`,
    /// `anyOf` beside `type`, schemas of any type …), which [`schema`] would drop or refuse.
    pub fn body_json(mut self, schema: Value) -> Self {
        self.raw_body = Some(schema);
        self
    }

    /// A successful answer: `application/json` of type `T`.
    pub fn answer<T: ToSchema>(mut self, status: u16, description: &str) -> Self {
        let s = self.component::<T>();
        self.answers
            .push((status, description.to_string(), Answer::Json(Box::new(s))));
        self
    }

    /// A successful answer: `application/json` with this schema ([`object`], [`schema`]).
    pub fn answer_schema(mut self, status: u16, description: &str, s: RefOr<Schema>) -> Self {
        self.answers
            .push((status, description.to_string(), Answer::Json(Box::new(s))));
        self
    }

    /// A successful answer of another media type (a string body).
    pub fn answer_media(mut self, status: u16, description: &str, media: &'static str) -> Self {
        self.answers
            .push((status, description.to_string(), Answer::Media(media)));
        self
    }

    /// An answer without a body (a redirect).
    pub fn answer_empty(mut self, status: u16, description: &str) -> Self {
        self.answers
            .push((status, description.to_string(), Answer::Empty));
        self
    }

    /// An error answer of this operation beyond the common ones (problem+json).
    pub fn error(mut self, status: u16, description: &str) -> Self {
        self.answers
            .push((status, description.to_string(), Answer::Problem));
        self
    }

    fn component<T: ToSchema>(&mut self) -> RefOr<Schema> {
        self.schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(&mut self.schemas);
        RefOr::Ref(Ref::from_schema_name(T::name()))
    }

    fn filter(&self) -> MethodFilter {
        match self.method {
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Put => MethodFilter::PUT,
            HttpMethod::Delete => MethodFilter::DELETE,
            _ => MethodFilter::GET,
        }
    }

    fn operation(&self, path: &str) -> Operation {
        let id = operation_id(&self.method, path);
        let mut b = OperationBuilder::new()
            .summary(Some(self.summary.clone()))
            .description(self.description.clone())
            .operation_id(Some(id));
        for name in path_parameters(path) {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(&name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(
                        match self.path_schemas.iter().find(|(n, _)| *n == name) {
                            Some((_, s)) => schema(s.clone()),
                            None if self.path_uuid => {
                                schema(json!({"type": "string", "format": "uuid"}))
                            }
                            None => {
                                schema(json!({"type": "string", "minLength": 1, "pattern": NO_NUL}))
                            }
                        },
                    )),
            );
        }
        b = b.parameter(hop_parameter());
        for p in &self.query {
            b = b.parameter(p.clone());
        }
        for (name, description, required, header_schema) in &self.headers {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Header)
                    .required(if *required {
                        Required::True
                    } else {
                        Required::False
                    })
                    .description(Some(description.clone()))
                    .schema(Some(schema(header_schema.clone()))),
            );
        }
        if let Some(body) = &self.body {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content("application/json", Content::new(Some(body.clone())))
                    .build(),
            ));
        }
        let mut errors: Vec<(u16, &str)> = COMMON_ERRORS.to_vec();
        if self.body.is_some() {
            errors.extend(BODY_ERRORS);
        }
        for (status, description) in errors {
            if !self.answers.iter().any(|(s, ..)| *s == status) {
                b = b.response(
                    status.to_string(),
                    RefOr::Ref(Ref::from_response_name(status.to_string())),
                );
                let _ = description;
            }
        }
        for (status, description, answer) in &self.answers {
            let r = ResponseBuilder::new()
                .description(description.clone())
                .header(HOP_HEADER, hop_response_header());
            let r = match answer {
                Answer::Json(s) => {
                    r.content("application/json", Content::new(Some(s.as_ref().clone())))
                }
                Answer::Problem => r.content("application/problem+json", problem_content()),
                Answer::Media(m) => {
                    r.content(*m, Content::new(Some(schema(json!({"type": "string"})))))
                }
                Answer::Empty => r,
            };
            b = b.response(status.to_string(), r.build());
        }
        b.build()
    }
}

/// A pattern for strings without U+0000 (Postgres stores none; the kit's extractors refuse
/// it: [`crate::http`]).
pub const NO_NUL: &str = r"^[^\u0000]*$";

/// `Tandem-Hop` as documented ([`crate::hop`]).
const HOP_HEADER: &str = "Tandem-Hop";

/// `Tandem-Hop` on every request: optional; what is not a count is ignored, as if absent.
fn hop_parameter() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(HOP_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "message delays so far (a count, 0 to 4294967295): protocol messages between \
             Tandem's servers carry it; a client sends none (a value that is not a count is \
             ignored, as if absent). See docs/commit-protocols.md",
        ))
        .schema(Some(schema(json!({"type": "string"}))))
        .build()
}

/// `Tandem-Hop` on every answer: the request's count (0 if none) at the handler's end, plus one.
fn hop_response_header() -> utoipa::openapi::header::Header {
    let mut h = utoipa::openapi::header::Header::new(schema(
        json!({"type": "string", "pattern": "^[0-9]{1,10}$"}),
    ));
    h.description = Some(
        "message delays until this answer: the request's `Tandem-Hop` (0 if none), advanced by \
         the answers its handler received, plus one"
            .to_string(),
    );
    h
}

fn problem_content() -> Content {
    Content::new(Some(RefOr::Ref(Ref::from_schema_name(PROBLEM))))
}

/// `getSagasId`-style ids: the method and the template's words.
fn operation_id(method: &HttpMethod, path: &str) -> String {
    let mut id = format!("{method:?}").to_lowercase();
    for word in path.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

/// The `{name}`s of an axum path template.
pub fn path_parameters(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

/// A server's route table: its router and its document, built together.
pub struct Api<S = ()> {
    router: Router<S>,
    paths: Paths,
    schemas: BTreeMap<String, RefOr<Schema>>,
    /// Schemas kept as written ([`Op::body_json`]), added to the served document.
    raw_schemas: BTreeMap<String, Value>,
}

impl<S: Clone + Send + Sync + 'static> Default for Api<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Api<S> {
    pub fn new() -> Self {
        Api {
            router: Router::new(),
            paths: Paths::new(),
            schemas: BTreeMap::new(),
            raw_schemas: BTreeMap::new(),
        }
    }

    /// Serve `handler` for `op`'s method on `path`, documented by `op`.
    ///
    /// # Panics
    /// As axum does when the method is already routed on `path`.
    pub fn route<H, T>(mut self, path: &str, mut op: Op, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        if let Some(raw) = op.raw_body.take() {
            let id = operation_id(&op.method, path);
            let name = format!("{}{}Body", id[..1].to_ascii_uppercase(), &id[1..]);
            op.body = Some(RefOr::Ref(Ref::from_schema_name(&name)));
            self.raw_schemas.insert(name, raw);
        }
        self.router = self.router.route(path, on(op.filter(), handler));
        self.paths
            .add_path_operation(path, vec![op.method.clone()], op.operation(path));
        self.schemas.extend(op.schemas);
        self
    }

    /// Both tables in one (their paths must not overlap).
    pub fn merge(mut self, other: Api<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.merge(other.paths);
        self.schemas.extend(other.schemas);
        self.raw_schemas.extend(other.raw_schemas);
        self
    }

    /// Wrap every route of this table in `layer` (as [`Router::route_layer`]).
    pub fn route_layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Error:
            Into<std::convert::Infallible> + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
    {
        self.router = self.router.route_layer(layer);
        self
    }

    /// Give the routes their state.
    pub fn with_state<S2>(self, state: S) -> Api<S2> {
        Api {
            router: self.router.with_state(state),
            paths: self.paths,
            schemas: self.schemas,
            raw_schemas: self.raw_schemas,
        }
    }
}

impl Api<()> {
    /// The router and the OpenAPI 3.1 document of `title` (as served), with
    /// `GET /openapi.json` (the document) and `GET /docs` (the page) routed and documented.
    pub fn finish(mut self, title: &str) -> (Router, Value) {
        let doc_op = get("This OpenAPI 3.1 document").answer_schema(200, "the document", object());
        let page_op = get("This document, rendered (HTML, no external assets)").answer_media(
            200,
            "the page",
            "text/html",
        );
        for (path, op) in [("/openapi.json", doc_op), ("/docs", page_op)] {
            self.paths
                .add_path_operation(path, vec![op.method.clone()], op.operation(path));
        }
        let mut doc = serde_json::to_value(document(title, self.paths, self.schemas))
            .expect("a document serializes");
        let components = doc["components"]["schemas"]
            .as_object_mut()
            .expect("the document has component schemas (Problem)");
        components.extend(self.raw_schemas);
        let json = std::sync::Arc::new(serde_json::to_vec(&doc).expect("a document serializes"));
        let router = self
            .router
            .route(
                "/openapi.json",
                axum::routing::get(move || {
                    let json = json.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            json.as_ref().clone(),
                        )
                    }
                }),
            )
            .route(
                "/docs",
                axum::routing::get(|| async { axum::response::Html(DOCS_HTML) }),
            );
        (router, doc)
    }
}

fn document(title: &str, paths: Paths, mut schemas: BTreeMap<String, RefOr<Schema>>) -> OpenApi {
    schemas.insert(PROBLEM.to_string(), problem_schema());
    let mut components = Components::new();
    components.schemas = schemas;
    for (status, description) in COMMON_ERRORS.iter().chain(BODY_ERRORS.iter()) {
        components.responses.insert(
            status.to_string(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(*description)
                    .header(HOP_HEADER, hop_response_header())
                    .content("application/problem+json", problem_content())
                    .build(),
            ),
        );
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Generated from the server's route table (tandem_kit::api). Every error is \
                     RFC 9457 application/problem+json.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// RFC 9457 problem details as Tandem answers them ([`crate::problem::Problem`]).
fn problem_schema() -> RefOr<Schema> {
    schema(json!({
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "description": "urn:tandem:problem:<slug>"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "invalid input: each field by JSON Pointer",
                "items": {
                    "type": "object",
                    "required": ["pointer", "message"],
                    "properties": {
                        "pointer": {"type": "string"},
                        "message": {"type": "string"}
                    }
                }
            }
        }
    }))
}

/// The `/docs` page: renders `/openapi.json` with a few lines of our own script.
pub const DOCS_HTML: &str = include_str!("api/docs.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_path_parameters_come_from_the_template() {
        assert_eq!(
            operation_id(&HttpMethod::Post, "/sagas/{id}/retry-now"),
            "postSagasIdRetryNow"
        );
        assert_eq!(path_parameters("/a/{id}/b/{sku}"), ["id", "sku"]);
        assert!(path_parameters("/healthz").is_empty());
    }

    /// Every operation documents the common errors (by reference) beside its own answers, and a
    /// body adds 413 / 415.
    #[test]
    fn operations_carry_the_common_errors() {
        let (_, doc) = Api::<()>::new()
            .route(
                "/things/{id}",
                put("Replace a thing")
                    .body_schema(object())
                    .answer_schema(200, "the thing", object())
                    .error(409, "taken"),
                || async { "" },
            )
            .finish("test");
        let v = doc;
        assert_eq!(v["openapi"], "3.1.0");
        let op = &v["paths"]["/things/{id}"]["put"];
        for s in [
            "200", "400", "404", "405", "409", "413", "415", "422", "503",
        ] {
            assert!(op["responses"].get(s).is_some(), "{s} missing: {op}");
        }
        assert_eq!(op["responses"]["404"]["$ref"], "#/components/responses/404");
        assert_eq!(op["parameters"][0]["name"], "id");
        assert!(v["components"]["schemas"][PROBLEM].is_object());
        assert!(v["paths"]["/openapi.json"]["get"].is_object());
        // every answer documents `Tandem-Hop`; every operation takes it
        assert!(op["responses"]["200"]["headers"]["Tandem-Hop"].is_object());
        assert!(v["components"]["responses"]["404"]["headers"]["Tandem-Hop"].is_object());
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "Tandem-Hop" && p["in"] == "header")
        );
        // a path parameter: no U+0000 (the kit's `Path` refuses it)
        assert_eq!(op["parameters"][0]["schema"]["pattern"], NO_NUL);
    }

    /// A body schema given as JSON is served as written, keywords utoipa's model lacks
    /// included, under `<operationId>Body`.
    #[test]
    fn json_bodies_are_served_as_written() {
        let body = json!({
            "type": "array",
            "prefixItems": [{"type": "integer"}],
            "anyOf": [{"minItems": 1, "maxItems": 1}, {"minItems": 3, "maxItems": 3}]
        });
        let (_, v) = Api::<()>::new()
            .route("/things", post("Add").body_json(body.clone()), || async {
                ""
            })
            .finish("test");
        let op = &v["paths"]["/things"]["post"];
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/PostThingsBody"
        );
        assert_eq!(v["components"]["schemas"]["PostThingsBody"], body);
    }
}
