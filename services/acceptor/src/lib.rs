//! A Paxos Commit acceptor (binary `acceptor`): a thin driver of
//! `tandem_protocols::paxos_commit::Acceptor` with its state in its own Postgres database.
//! Tandem runs 2F+1 of them (default F = 1: three processes, three databases).
//!
//! Per transaction, one row holds the core's snapshot (`Record::Acceptor`: per participant's
//! instance, the ballot promised and the value accepted). A message is handled in one database
//! transaction: lock the row, rebuild the core from it (`Acceptor::recover`), feed the message,
//! and execute the actions in order — `ForceWrite(Acceptor)` updates the row and **commits
//! before anything is sent**; `Send` to the sender is the HTTP answer; `Send` to the default
//! leader (the ballot-0 `Phase2b` bundle, once every instance has a value) is a
//! `POST {leader_url}/transactions/{txn}/paxos`, one try (a lost bundle is what the leader's
//! next ballot is for).
//!
//! The core keeps its state in memory between messages; this driver keeps it in the row, so a
//! change the core has not forced yet (a ballot-0 2a while other instances have no value) is
//! written as well, in the same transaction.
//!
//! Endpoints: `POST /paxos/phase2a`, `POST /paxos/phase1a` (body
//! [`tandem_kit::paxos::ToAcceptor`], answer [`tandem_kit::paxos::AcceptorReply`]),
//! `GET /paxos/{txn_id}` (the slots, for audits and tests), `GET /healthz`, `GET /stats`; with
//! `FAULT_INJECTION=on` also the kit's `/faults` ([`tandem_kit::faults`]): the messages it
//! receives from a leader or a participant can be lost, delayed or lose their answer, per
//! transaction and per sender (`Tandem-Sender`; its own is `NODE_NAME`).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::{Value, json};
use sqlx::PgPool;
use tandem_kit::api::{self, Api};
use tandem_kit::auth::{Access, Auth, AuthConfig, Rule, rule};
use tandem_kit::faults::{FaultOp, Faults, Message, Sender, Switch};
use tandem_kit::http::{Json, Path};
use tandem_kit::paxos::{AcceptorReply, ToAcceptor, ToLeader, call};
use tandem_kit::problem::Problem;
use tandem_protocols::paxos_commit::{Acceptor, Msg, Record, Slot};
use tandem_protocols::{Action, Input, NodeId, Role};
use uuid::Uuid;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/acceptor");

/// Configuration (env or flags; `acceptor --help`).
#[derive(Debug, Clone, Parser)]
#[command(name = "acceptor", about = "A Paxos Commit acceptor (one of 2F+1)")]
pub struct Config {
    /// This acceptor's own database, as its runtime role (without DATABASE_OWNER_URL also
    /// created if missing and migrated at start with this role: the privileged zero-setup path).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tandem_acceptor_0"
    )]
    pub database_url: String,
    /// The same database as its owner role: migrations run with it, nothing is created
    /// (`tandem db provision`, docs/security.md).
    #[arg(long, env = "DATABASE_OWNER_URL")]
    pub database_owner_url: Option<String>,
    /// 8084, 8085, 8086 for acceptors 0, 1, 2 of the default stack.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8084")]
    pub listen_addr: SocketAddr,
    /// Connections in the pool (one message holds one, briefly).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 3)]
    pub db_pool_size: u32,
    /// This node's name: sent in the `Tandem-Sender` header of what it sends a leader, and the
    /// receiver named by its link faults. Give each acceptor its own (`acceptor-0` …).
    #[arg(long, env = "NODE_NAME", default_value = "acceptor")]
    pub node_name: String,
    /// `on` mounts the `/faults` endpoints (scoped fault injection on the messages it receives:
    /// any client can then make it lose or delay them — for demos and tests only). Off by
    /// default.
    #[arg(long, env = "FAULT_INJECTION", value_enum, default_value = "off")]
    pub fault_injection: Switch,
    #[command(flatten)]
    pub auth: AuthConfig,
}

impl Config {
    /// Defaults with another database (tests).
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            database_owner_url: None,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_pool_size: 3,
            node_name: "acceptor".into(),
            fault_injection: Switch::Off,
            auth: AuthConfig::default(),
        }
    }
}

/// A ready acceptor: connected, migrated.
#[derive(Debug, Clone)]
pub struct App {
    pub pool: PgPool,
    /// Carries this acceptor's service token to the leader.
    http: reqwest::Client,
    auth: Auth,
    /// The messages it receives go through these (`FAULT_INJECTION`, [`tandem_kit::faults`]).
    pub faults: Faults,
}

/// Who may call each route (see `tandem_kit::auth`): the leader's messages need a service
/// token; the slots are for audits (service or operator).
pub const ACCESS: &[Rule] = &[
    rule("POST", "/paxos/phase2a", Access::Service),
    rule("POST", "/paxos/phase1a", Access::Service),
    rule("GET", "/paxos/{txn_id}", Access::ServiceOrOperator),
    rule("GET", "/healthz", Access::Open),
];

/// Apply the migrations (as the owner role when configured) and connect.
pub async fn build(config: Config) -> Result<App, tandem_kit::Error> {
    let auth = Auth::load(&config.auth)?;
    let pool = tandem_kit::db::migrate_and_open(
        "acceptor",
        &config.database_url,
        config.database_owner_url.as_deref(),
        &MIGRATIONS,
        config.db_pool_size,
    )
    .await?;
    let http = reqwest::Client::builder()
        .default_headers(auth.client_headers(&config.node_name))
        .build()
        .map_err(|e| tandem_kit::Error::Connect(e.into()))?;
    let faults = Faults::for_node(config.fault_injection, &config.node_name);
    Ok(App {
        pool,
        http,
        auth,
        faults,
    })
}

impl App {
    pub fn router(&self) -> Router {
        let message_op = |summary| {
            api::post(summary)
                .body_schema(api::schema(json!({
                    "type": "object",
                    "required": ["txn_id", "n", "acceptor", "from", "msg"],
                    "properties": {
                        "txn_id": {"type": "string", "format": "uuid"},
                        "n": {"type": "integer", "minimum": 1, "maximum": 255},
                        "acceptor": {"type": "integer", "minimum": 0, "maximum": 255},
                        "from": {"type": "object", "description": "the sender's node id"},
                        "leader_url": {"type": "string"},
                        "msg": {"type": "object", "description": "the core's Phase2a / Phase1a"}
                    }
                })))
                .answer_schema(
                    200,
                    "`{\"reply\"}`: the core's Phase2b / Phase1b, or null (state committed first)",
                    api::object(),
                )
        };
        let own = Api::new()
            .route(
                "/paxos/phase2a",
                message_op("A Phase2a message (a vote, or a leader's ballot)"),
                message,
            )
            .route(
                "/paxos/phase1a",
                message_op("A Phase1a message (a new leader's ballot)"),
                message,
            )
            .route(
                "/paxos/{txn_id}",
                api::get("This acceptor's slots of a transaction")
                    .path_uuid()
                    .answer_schema(200, "`{\"txn_id\", \"n\", \"slots\"}`", api::object()),
                slots,
            )
            .route(
                "/healthz",
                api::get("Health: 200 when the database answers").answer_schema(
                    200,
                    "`{\"status\": \"ok\"}`",
                    api::object(),
                ),
                healthz,
            )
            .with_state(self.clone())
            .merge(self.faults.routes());
        let rules = ACCESS.iter().chain(tandem_kit::faults::ACCESS);
        tandem_kit::http::finish(own, "acceptor", &self.auth.guard(rules))
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tandem_kit::Error> {
        let addr = listener.local_addr().map_err(tandem_kit::Error::Serve)?;
        self.auth.check_exposure(addr, "acceptor")?;
        tracing::info!(%addr, faults = self.faults.enabled(), "acceptor listening");
        tandem_kit::http::serve(listener, self.router(), shutdown)
            .await
            .map_err(tandem_kit::Error::Serve)
    }
}

/// The whole `main`: tracing, crash points, configuration, serve until SIGINT/SIGTERM.
pub async fn main() -> anyhow::Result<()> {
    tandem_kit::http::init_tracing();
    tandem_kit::crash::init()?;
    let config = Config::parse();
    let listener = tandem_kit::http::bind(config.listen_addr).await?;
    build(config)
        .await?
        .run(listener, tandem_kit::http::shutdown_signal())
        .await?;
    Ok(())
}

async fn healthz(State(app): State<App>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1").execute(&app.pool).await?;
    Ok(Json(json!({ "status": "ok", "service": "acceptor" })))
}

/// `GET /paxos/{txn_id}`: the acceptor's slots for a transaction (404 if it never heard of it).
async fn slots(State(app): State<App>, Path(id): Path<Uuid>) -> Result<Json<Value>, Problem> {
    let row: Option<(i16, Value)> =
        sqlx::query_as("SELECT n, slots FROM paxos_acceptor WHERE txn_id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await?;
    let (n, slots) = row.ok_or_else(|| Problem::not_found(format!("no transaction {id}")))?;
    Ok(Json(json!({ "txn_id": id, "n": n, "slots": slots })))
}

#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn check(req: &ToAcceptor) -> Result<(), Problem> {
    if req.n == 0 || req.n > 64 {
        return Err(Problem::invalid("/n", "must be 1 to 64"));
    }
    let instances: Vec<u8> = match &req.msg {
        Msg::Phase2a { values, .. } => values.iter().map(|(i, _)| *i).collect(),
        Msg::Phase1a { instances, .. } => instances.clone(),
        _ => {
            return Err(Problem::invalid(
                "/msg",
                "an acceptor takes Phase2a and Phase1a only",
            ));
        }
    };
    if instances.iter().any(|i| *i >= req.n) {
        return Err(Problem::invalid("/msg", "names an instance not below n"));
    }
    if usize::from(req.acceptor) >= tandem_kit::paxos::MAX_ACCEPTORS {
        return Err(Problem::invalid("/acceptor", "must be below 7"));
    }
    Ok(())
}

/// `POST /paxos/phase2a` and `/paxos/phase1a`: checked, then handled under this acceptor's
/// faults (op `phase2a` / `phase1a`, scoped by `txn_id`, and the sender).
async fn message(State(app): State<App>, from: Sender, Json(req): Json<ToAcceptor>) -> Response {
    if let Err(p) = check(&req) {
        return p.into_response();
    }
    let op = match req.msg {
        Msg::Phase1a { .. } => FaultOp::Phase1a,
        _ => FaultOp::Phase2a,
    };
    let m = Message::txn(op, req.txn_id, &from);
    app.faults.apply(m, handle(&app, req)).await
}

/// One message, one database transaction: lock, rebuild, handle, force, commit, then answer.
async fn handle(app: &App, req: ToAcceptor) -> Result<Json<AcceptorReply>, Problem> {
    let shape = tandem_kit::paxos::shape(req.n, 1);
    let fresh = sqlx::types::Json(Acceptor::new(shape, req.acceptor).slots);
    let mut tx = app.pool.begin().await?;
    sqlx::query(
        "INSERT INTO paxos_acceptor (txn_id, n, slots) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(req.txn_id)
    .bind(i16::from(req.n))
    .bind(&fresh)
    .execute(&mut *tx)
    .await?;
    let (n, sqlx::types::Json(stored)): (i16, sqlx::types::Json<Vec<Slot>>) =
        sqlx::query_as("SELECT n, slots FROM paxos_acceptor WHERE txn_id = $1 FOR UPDATE")
            .bind(req.txn_id)
            .fetch_one(&mut *tx)
            .await?;
    if n != i16::from(req.n) {
        return Err(Problem::invalid(
            "/n",
            format!("this transaction has {n} participants here"),
        ));
    }
    let mut core = Acceptor::recover(shape, req.acceptor, &[Record::Acceptor(stored)]);
    let actions = core.handle(Input::Receive {
        from: req.from,
        msg: req.msg,
    });
    let mut reply = None;
    let mut to_leader = None;
    for a in actions {
        match a {
            Action::ForceWrite(Record::Acceptor(slots)) => {
                sqlx::query(
                    "UPDATE paxos_acceptor SET slots = $2, updated_at = now() WHERE txn_id = $1",
                )
                .bind(req.txn_id)
                .bind(sqlx::types::Json(slots))
                .execute(&mut *tx)
                .await?;
            }
            Action::Send { to, msg } if to == req.from => reply = Some(msg),
            Action::Send {
                to: NodeId::Coordinator(_),
                msg,
            } => to_leader = Some(msg),
            _ => {}
        }
    }
    if core.dirty {
        // Changed but not forced (a ballot-0 2a before every instance has a value: no reply
        // yet). The row is where this driver keeps the core between messages, so the change is
        // written too — more durable than the core needs, never less.
        sqlx::query("UPDATE paxos_acceptor SET slots = $2, updated_at = now() WHERE txn_id = $1")
            .bind(req.txn_id)
            .bind(sqlx::types::Json(&core.slots))
            .execute(&mut *tx)
            .await?;
    }
    // Persist, then send: the snapshot is committed (synchronous_commit) before any answer.
    tx.commit().await?;
    tandem_kit::stats::write_committed(&app.pool);
    tandem_kit::crash::point("acceptor.after_force");
    if let (Some(msg), Some(leader)) = (to_leader, req.leader_url.clone()) {
        let url = format!(
            "{}/transactions/{}/paxos",
            leader.trim_end_matches('/'),
            req.txn_id
        );
        let body = ToLeader {
            acceptor: req.acceptor,
            msg,
        };
        let http = app.http.clone();
        tandem_kit::hop::spawn_send(async move {
            if let Err(e) = call::<_, Value>(&http, &url, &body).await {
                tracing::info!(error = %e, "paxos: the bundle did not reach the leader (its next ballot will ask)");
            }
        });
    }
    Ok(Json(AcceptorReply { reply }))
}
