//! The Postgres commit ceiling: raw single-row INSERT commits/s on a scratch database, the
//! reference every workload's throughput is compared with.

use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::BenchArgs;
use super::measure::{Latency, Op, Window, closed_loop};

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub connections: usize,
    pub commits_per_sec: f64,
    pub latency: Latency,
}

/// `clients` concurrent INSERT loops over at most as many connections as the server has free
/// (minus a reserve for other users).
pub async fn measure(args: &BenchArgs, clients: usize) -> anyhow::Result<Ceiling> {
    let name = format!("{}_ceiling", args.db_prefix);
    let url = tandem_kit::db::database_url(&args.database_url, &name);
    tandem_kit::db::create_database_if_missing(&PgConnectOptions::from_str(&url)?).await?;
    let free: i64 = {
        let mut conn = tandem_kit::db::admin_connection(&args.database_url).await?;
        sqlx::query_scalar(
            "SELECT current_setting('max_connections')::bigint - count(*) FROM pg_stat_activity",
        )
        .fetch_one(&mut conn)
        .await?
    };
    let connections = clients.min((free - 15).max(1) as usize);
    let pool = PgPoolOptions::new()
        .max_connections(connections as u32)
        .min_connections(connections as u32)
        .connect(&url)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS ceiling (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let p = pool.clone();
    let op: Op = Arc::new(move |client, seq| {
        let p = p.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO ceiling (payload) VALUES ($1)")
                .bind(format!("{client}-{seq}"))
                .execute(&p)
                .await
                .map(|_| Vec::new())
                .map_err(|e| format!("sql: {e}"))
        })
    });
    let window = Window {
        warmup: args.warmup.min(1.0),
        duration: args.duration.min(5.0),
    };
    let r = closed_loop(&format!("ceiling C={clients}"), clients, window, op).await;
    sqlx::query("TRUNCATE ceiling").execute(&pool).await?;
    pool.close().await;
    Ok(Ceiling {
        connections,
        commits_per_sec: r.per_sec,
        latency: r.latency,
    })
}
