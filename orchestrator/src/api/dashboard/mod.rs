//! The operators' console: plain HTML, CSS and JavaScript compiled into the binary
//! (`include_str!`; no build step, nothing fetched at run time), served by the orchestrator
//! itself at `/ui/`. The page is a client of the same API (`GET /sagas`, `GET /sagas/{id}`,
//! `GET /definitions`, the actions of [`super::actions`]); live updates are polls.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `/` and `/ui` lead to the console.
pub(super) async fn to_console() -> Redirect {
    Redirect::to("/ui/")
}
