//! `POST /definitions`, `GET /definitions`, `GET /definitions/{name}`,
//! `GET /definitions/{name}/versions`: definitions as data (checked and stored by
//! [`crate::registry::Registry`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_kit::http::{Json, Path, Query};
use tandem_kit::problem::Problem;

use super::Ctx;

pub(super) async fn create(
    State(c): State<Ctx>,
    Json(doc): Json<Value>,
) -> Result<Response, Problem> {
    let added = c.driver.registry().add(&doc).await?;
    let status = if added.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "name": added.name, "version": added.version })),
    )
        .into_response())
}

pub(super) async fn list(State(c): State<Ctx>) -> Json<Value> {
    let items: Vec<Value> = c
        .driver
        .registry()
        .list()
        .into_iter()
        .map(|(name, version, def)| {
            json!({
                "name": name, "version": version, "description": def.description,
                "steps": def.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "items": items }))
}

/// 404 for a definition the registry does not know (a U+0000 in its name shown escaped).
fn unknown(name: &str) -> Problem {
    Problem::not_found(format!("no definition {:?}", name.replace('\0', "\\u0000")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct OneParams {
    /// A version's hash (a saga's own version, `GET /definitions/{name}/versions`): 64 hex
    /// digits; any other is no stored version (404).
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    version: Option<String>,
}

/// `GET /definitions/{name}`: the current version, or `?version=` that one (a run's own).
pub(super) async fn get_one(
    State(c): State<Ctx>,
    Path(name): Path<String>,
    Query(p): Query<OneParams>,
) -> Result<Json<Value>, Problem> {
    let not_found = || unknown(&name);
    // Only a name the registry knows reaches the database (so never one with U+0000).
    let (current, _) = c.driver.registry().current(&name).ok_or_else(not_found)?;
    let version = match p.version {
        // A version is a hex SHA-256: anything else (a NUL included) is no stored version.
        Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => v,
        Some(v) => {
            return Err(Problem::not_found(format!(
                "definition {name:?} has no version {:?}",
                v.replace('\0', "\\u0000")
            )));
        }
        None => current,
    };
    let body = c
        .store
        .definition(&name, &version)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({ "name": name, "version": version, "definition": body }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct VersionsParams {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// `GET /definitions/{name}/versions?limit=`: every stored version of `name`, newest first
/// (at most `limit`, 1–500, default 50), each with its body and whether it is the current one
/// (what new runs start on). Runs stay on the version they started with, so the console draws
/// each version.
pub(super) async fn versions(
    State(c): State<Ctx>,
    Path(name): Path<String>,
    Query(p): Query<VersionsParams>,
) -> Result<Json<Value>, Problem> {
    let limit = super::list_limit(p.limit)?;
    let (current, _) = c
        .driver
        .registry()
        .current(&name)
        .ok_or_else(|| unknown(&name))?;
    let items: Vec<Value> = c
        .store
        .definition_versions(&name, limit)
        .await?
        .into_iter()
        .map(|(version, body, created_at)| {
            json!({
                "version": version, "current": version == current, "created_at": created_at,
                "definition": body,
            })
        })
        .collect();
    Ok(Json(json!({ "name": name, "items": items })))
}
