//! The one entry point that creates a saga ([`Driver::start`]: checks, the engine's first
//! transition, the store, then driving it).

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tandem_kit::problem::FieldIssue;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Driver;
use super::run::Active;
use crate::error::{Error, Result};
use crate::lease::Leases;
use crate::saga::definition::canonical_json;
use crate::saga::{Definition, Input, engine};
use crate::store::{Created, EventRow, NewRun, NewSaga, SagaRow};
use crate::text::{check_json, check_str};

/// A request to start a saga.
pub struct StartSaga {
    pub definition: String,
    /// Pin a definition version (default: the current one).
    pub version: Option<String>,
    pub input: Value,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the canonical request body: the same key with another body is refused.
    pub request_hash: String,
    /// Register a waiter before the saga can settle (POST-and-wait).
    pub watch: bool,
}

impl StartSaga {
    /// This request run as `id` with definition `def` at `version`, leased with `leases` (a
    /// saga's or a transaction's).
    pub fn new_run<'a>(
        &'a self,
        id: Uuid,
        def: &'a Definition,
        version: &'a str,
        leases: &'a Leases,
    ) -> NewRun<'a> {
        NewRun {
            id,
            definition: &def.name,
            version,
            business_key: def.business_key(&self.input),
            input: &self.input,
            input_hash: hash_json(&self.input),
            request_hash: &self.request_hash,
            idempotency_key: self.idempotency_key.as_deref(),
            owner: leases.owner(),
            lease_ttl: leases.ttl(),
        }
    }
}

/// What starting a saga did.
pub enum Started {
    /// A new saga, now driven here. `finished` resolves when it settles (if asked to watch).
    New {
        row: Box<SagaRow>,
        events: Vec<EventRow>,
        finished: Option<oneshot::Receiver<()>>,
    },
    /// The same request again (same Idempotency-Key and body, or same business key and input).
    Existing(Uuid),
    /// The Idempotency-Key started another saga with a different body.
    KeyReused { saga_id: Uuid },
    /// The business key runs another saga with a different input.
    BusinessKeyConflict {
        saga_id: Uuid,
        definition: String,
        business_key: String,
    },
    /// The business key runs a 2PC transaction (one namespace for both).
    TakenByTransaction(Uuid),
}

/// Hex SHA-256 of a JSON value's canonical form.
pub fn hash_json(v: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

/// Every string of the request Postgres would be handed, checked for U+0000.
fn check_storable(req: &StartSaga) -> Result<()> {
    let mut issues: Vec<FieldIssue> = Vec::new();
    issues.extend(check_str(&req.definition, "/definition").err());
    if let Some(v) = &req.version {
        issues.extend(check_str(v, "/version").err());
    }
    issues.extend(check_json(&req.input, "/input").err());
    if let Some(k) = &req.idempotency_key {
        issues.extend(check_str(k, "/header/Idempotency-Key").err());
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(issues))
    }
}

impl Driver {
    /// Start a saga: check the request (storable text, known definition, valid input), compute
    /// the engine's first transition, store the saga with it (one statement; idempotency and
    /// business keys sorted out there), then drive it here. Nothing is stored for a refused
    /// request.
    pub async fn start(self: &Arc<Self>, req: StartSaga) -> Result<Started> {
        check_storable(&req)?;
        let (version, def) = self
            .registry
            .resolve(&req.definition, req.version.as_deref())
            .await?;
        def.validate_input(&req.input)
            .map_err(|errors| Error::fields_at("/input", errors))?;
        let id = Uuid::now_v7();
        let t = engine::transition(
            &def,
            &id.to_string(),
            &req.input,
            &engine::initial_state(&def),
            Input::Start,
            chrono::Utc::now(),
            rand::random(),
        );
        let traceparent = tandem_kit::telemetry::current();
        let new = NewSaga {
            run: req.new_run(id, &def, &version, &self.work.leases),
            state: &t.state,
            events: &t.events,
        };
        let created = self.work.leases.store().create_saga(&new).await?;
        Ok(match created {
            Created::New(saga) => {
                let (row, events) = *saga;
                crate::metrics::saga_started(&def.name);
                let finished = req.watch.then(|| self.watch(id));
                self.drive_created(row.clone(), def, t.command, traceparent);
                Started::New {
                    row: Box::new(row),
                    events,
                    finished,
                }
            }
            Created::Replay(existing) | Created::SameBusinessKey(existing) => {
                Started::Existing(existing)
            }
            Created::KeyReused(saga_id) => Started::KeyReused { saga_id },
            Created::TakenByOther(transaction_id) => Started::TakenByTransaction(transaction_id),
            Created::BusinessKeyConflict(saga_id) => Started::BusinessKeyConflict {
                saga_id,
                definition: def.name.clone(),
                business_key: new.run.business_key.clone().unwrap_or_default(),
            },
        })
    }

    /// Drive a saga this instance has just created (its first call decided and persisted).
    fn drive_created(
        self: &Arc<Self>,
        row: SagaRow,
        def: Arc<crate::saga::Definition>,
        command: crate::saga::Command,
        traceparent: Option<String>,
    ) {
        // Every slot busy (MAX_ACTIVE_SAGAS): the lease is handed back at once so the saga is
        // claimed as soon as an instance has room (the release NOTIFYs idle instances; a slot
        // freeing here wakes this one), instead of waiting for the lease to expire.
        let Some(permit) = self.work.activate(row.id, row.lease.epoch) else {
            return;
        };
        let mut active = Active::new(row, def);
        active.traceparent = traceparent;
        self.spawn_run(active, command, permit);
    }
}
