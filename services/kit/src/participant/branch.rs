//! A service's 2PC branches in Postgres: the `tpc_branch` table, the gid, and what
//! `pg_prepared_xacts` says about a branch.
//!
//! A branch is `(txn_id, step)`. Its row is committed **before** the effect runs (state
//! `preparing`, with the coordinator's URL: rows written inside a prepared transaction are
//! invisible until it commits, and recovery needs that URL). The prepared transaction itself
//! inserts the branch's `tpc_committed` row, which becomes visible exactly when `COMMIT
//! PREPARED` does — a branch whose gid has left `pg_prepared_xacts` is committed if that row
//! exists and rolled back otherwise. (It is a row of its own, not an update of the branch row:
//! a row version written by a prepared transaction makes every later insert of the same key
//! wait for it.) `aborted` is written after a NO vote, a `ROLLBACK PREPARED`, or for an abort
//! that came before its prepare (a tombstone, so the late prepare votes NO).

use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::problem::Problem;

/// Migration version of the branch table in every service (the kit's second migration).
pub const MIGRATION_VERSION: i64 = 20_261_130_160_556;

/// Every Tandem gid starts with this (`tandem:<txn_id>:<step>`).
pub const GID_PREFIX: &str = "tandem:";

pub const DDL: &str = r#"
CREATE TABLE tpc_branch (
    txn_id          uuid        NOT NULL,
    step            integer     NOT NULL CHECK (step BETWEEN 0 AND 65535),
    -- the action path and the coordinator to ask on recovery (NULL for an abort tombstone)
    action          text,
    coordinator_url text,
    -- 'preparing': logged before the effect (committed: see tpc_committed);
    -- 'aborted': voted NO, rolled back, or aborted before its prepare arrived
    state           text        NOT NULL CHECK (state IN ('preparing', 'aborted')),
    -- the NO vote's problem, answered again to a duplicate prepare
    reason          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    PRIMARY KEY (txn_id, step)
);

-- One row per committed branch, inserted by the prepared transaction: visible exactly when
-- COMMIT PREPARED is.
CREATE TABLE tpc_committed (
    txn_id       uuid        NOT NULL,
    step         integer     NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txn_id, step)
);
"#;

/// `migrator` plus the branch table as version [`MIGRATION_VERSION`].
pub fn with_branch_table(migrator: Migrator) -> Migrator {
    crate::barrier::with_migration(migrator, MIGRATION_VERSION, "tandem kit 2pc branches", DDL)
}

/// One participant branch of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BranchId {
    pub txn_id: Uuid,
    pub step: u16,
}

impl BranchId {
    /// `tandem:<txn_id>:<step>`: built only from a parsed UUID and an integer (it is a literal
    /// in the SQL), unique across every database of the server, 49 bytes.
    pub fn gid(&self) -> String {
        format!("{GID_PREFIX}{}:{}", self.txn_id.hyphenated(), self.step)
    }

    pub fn parse_gid(gid: &str) -> Option<BranchId> {
        let (txn, step) = gid.strip_prefix(GID_PREFIX)?.rsplit_once(':')?;
        Some(BranchId {
            txn_id: Uuid::parse_str(txn).ok()?,
            step: step.parse().ok()?,
        })
    }

    /// `<verb> '<gid>'` (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`).
    pub async fn run(&self, conn: &mut PgConnection, verb: &str) -> Result<(), sqlx::Error> {
        let sql = format!("{verb} '{}'", self.gid());
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(drop)
    }
}

impl std::fmt::Display for BranchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txn_id, self.step)
    }
}

/// What the database says about a branch.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// No row.
    Unknown,
    /// Row `preparing`, no prepared transaction: a prepare in flight, or one that failed
    /// before `PREPARE TRANSACTION`.
    Preparing,
    /// A prepared transaction holds the branch's effect.
    Prepared,
    Committed,
    Aborted {
        reason: Option<Value>,
    },
}

/// The branch's row and its prepared transaction, as of now.
///
/// Two statements, in this order, on a connection outside any transaction (each statement
/// takes its own snapshot). One statement would race `COMMIT PREPARED`: Postgres makes the
/// commit visible first and only then drops the gid from `pg_prepared_xacts`, which is read
/// live, not from the statement's snapshot — so a statement whose snapshot predates the commit
/// but whose `pg_prepared_xacts` scan comes after it sees neither the prepared transaction nor
/// the `tpc_committed` row, and a committed branch looked `preparing` (seen under load: a
/// duplicate commit then rebuilt the core from an empty log and refused as "aborted"). Reading
/// the prepared-transaction table first, then the rows with a later snapshot, closes that gap:
/// a gid gone at the first read was committed (or rolled back) before the second began.
pub async fn seen(conn: &mut PgConnection, id: BranchId) -> Result<Seen, Problem> {
    let prepared: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts
                        WHERE gid = $1 AND database = current_database())",
    )
    .bind(id.gid())
    .fetch_one(&mut *conn)
    .await?;
    if prepared {
        return Ok(Seen::Prepared);
    }
    let (state, reason, committed): (Option<String>, Option<Value>, bool) = sqlx::query_as(
        "SELECT b.state, b.reason,
                EXISTS (SELECT 1 FROM tpc_committed c WHERE c.txn_id = $1 AND c.step = $2)
         FROM (SELECT 1) one
         LEFT JOIN tpc_branch b ON b.txn_id = $1 AND b.step = $2",
    )
    .bind(id.txn_id)
    .bind(i32::from(id.step))
    .fetch_one(&mut *conn)
    .await?;
    Ok(match (state.as_deref(), committed) {
        (_, true) => Seen::Committed,
        (None, false) => Seen::Unknown,
        (Some("aborted"), false) => Seen::Aborted { reason },
        (Some(_), false) => Seen::Preparing,
    })
}

/// Log the branch before its effect runs (no-op if it exists).
pub async fn log_preparing(
    pool: &PgPool,
    id: BranchId,
    action: &str,
    coordinator_url: &str,
) -> Result<(), Problem> {
    sqlx::query(
        "INSERT INTO tpc_branch (txn_id, step, action, coordinator_url, state)
         VALUES ($1, $2, $3, $4, 'preparing') ON CONFLICT DO NOTHING",
    )
    .bind(id.txn_id)
    .bind(i32::from(id.step))
    .bind(action)
    .bind(coordinator_url)
    .execute(pool)
    .await?;
    crate::stats::write_committed(pool);
    Ok(())
}

/// The branch is aborted (a NO vote with its `reason`, a rollback, or an abort tombstone). A
/// committed branch is left alone. The row is locked `NOWAIT` first: if a prepare holds it (in
/// flight, or prepared), this is a 503 to retry rather than a wait behind business work.
pub async fn mark_aborted(
    pool: &PgPool,
    id: BranchId,
    reason: Option<&Value>,
) -> Result<(), Problem> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM tpc_branch WHERE txn_id = $1 AND step = $2 FOR UPDATE NOWAIT")
        .bind(id.txn_id)
        .bind(i32::from(id.step))
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tpc_branch (txn_id, step, state, reason, decided_at)
         VALUES ($1, $2, 'aborted', $3, now())
         ON CONFLICT (txn_id, step) DO UPDATE
           SET state = 'aborted', reason = coalesce(EXCLUDED.reason, tpc_branch.reason),
               decided_at = coalesce(tpc_branch.decided_at, now())
         WHERE NOT EXISTS (SELECT 1 FROM tpc_committed c
                           WHERE c.txn_id = tpc_branch.txn_id AND c.step = tpc_branch.step)",
    )
    .bind(id.txn_id)
    .bind(i32::from(id.step))
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    crate::stats::write_committed(pool);
    Ok(())
}

/// Inside the branch's transaction, before the effect: lock the row (`NOWAIT`: a prepare in
/// flight or prepared holds it) and insert its `tpc_committed` row (visible at `COMMIT
/// PREPARED`). `false` if the branch is not `preparing` any more.
pub async fn claim_for_prepare(conn: &mut PgConnection, id: BranchId) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar::<_, i32>(
        "SELECT 1 FROM tpc_branch b WHERE txn_id = $1 AND step = $2 AND state = 'preparing'
           AND NOT EXISTS (SELECT 1 FROM tpc_committed c WHERE c.txn_id = $1 AND c.step = $2)
         FOR UPDATE NOWAIT",
    )
    .bind(id.txn_id)
    .bind(i32::from(id.step))
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if claimed {
        sqlx::query("INSERT INTO tpc_committed (txn_id, step) VALUES ($1, $2)")
            .bind(id.txn_id)
            .bind(i32::from(id.step))
            .execute(&mut *conn)
            .await?;
    }
    Ok(claimed)
}

/// A prepared branch of this database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PreparedBranch {
    pub gid: String,
    pub txn_id: Uuid,
    pub step: u16,
    pub age_ms: i64,
    pub coordinator_url: Option<String>,
}

/// This database's prepared Tandem transactions, oldest first (`min_age_ms`: only older ones).
pub async fn prepared(pool: &PgPool, min_age_ms: i64) -> Result<Vec<PreparedBranch>, Problem> {
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT p.gid, (extract(epoch FROM now() - p.prepared) * 1000)::bigint,
                b.coordinator_url
         FROM pg_prepared_xacts p
         LEFT JOIN tpc_branch b
           ON p.gid = 'tandem:' || b.txn_id::text || ':' || b.step::text
         WHERE p.database = current_database() AND p.gid LIKE 'tandem:%'
           AND p.prepared <= now() - make_interval(secs => $1::double precision / 1000)
         ORDER BY p.prepared",
    )
    .bind(min_age_ms)
    .fetch_all(pool)
    .await?;
    crate::stats::read_committed(pool);
    Ok(rows
        .into_iter()
        .filter_map(|(gid, age_ms, coordinator_url)| {
            let id = BranchId::parse_gid(&gid)?;
            Some(PreparedBranch {
                gid,
                txn_id: id.txn_id,
                step: id.step,
                age_ms,
                coordinator_url,
            })
        })
        .collect())
}

/// Branches left `preparing` by a crash (no prepared transaction): their work was lost with the
/// process. Called at start-up, before serving.
pub async fn lost_at_start(pool: &PgPool) -> Result<Vec<BranchId>, Problem> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT b.txn_id, b.step FROM tpc_branch b
         WHERE b.state = 'preparing'
           AND NOT EXISTS (SELECT 1 FROM tpc_committed c
                           WHERE c.txn_id = b.txn_id AND c.step = b.step)
           AND NOT EXISTS (
             SELECT 1 FROM pg_prepared_xacts p
             WHERE p.database = current_database()
               AND p.gid = 'tandem:' || b.txn_id::text || ':' || b.step::text)",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(txn_id, step)| {
            Some(BranchId {
                txn_id,
                step: u16::try_from(step).ok()?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_are_short_and_parse_back() {
        let id = BranchId {
            txn_id: Uuid::now_v7(),
            step: 65535,
        };
        let gid = id.gid();
        assert!(gid.len() <= 200, "{gid}");
        assert!(
            gid.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-')
        );
        assert_eq!(BranchId::parse_gid(&gid), Some(id));
        assert_eq!(BranchId::parse_gid("tandem:nope:1"), None);
        assert_eq!(BranchId::parse_gid("other:x"), None);
    }
}
