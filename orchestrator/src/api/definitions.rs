//! `POST /definitions`, `GET /definitions`, `GET /definitions/{name}`: definitions as data
//! (checked and stored by [`crate::registry::Registry`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tandem_kit::http::{Json, Path};
use tandem_kit::problem::Problem;

use super::Ctx;
use crate::store;

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

pub(super) async fn get_one(
    State(c): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let not_found =
        || Problem::not_found(format!("no definition {:?}", name.replace('\0', "\\u0000")));
    // Only a name the registry knows reaches the database (so never one with U+0000).
    let (version, _) = c.driver.registry().current(&name).ok_or_else(not_found)?;
    let body = store::definition(&c.pool, &name, &version)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({ "name": name, "version": version, "definition": body }),
    ))
}
