//! The transaction that holds a branch's effect until it is prepared: a pooled connection with
//! a manual `BEGIN`, because after `PREPARE TRANSACTION` the session has no transaction left to
//! commit or roll back. If the holder is dropped while the transaction is open (a cancelled
//! request), the connection is closed instead of going back to the pool mid-transaction.

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use super::branch::BranchId;
use crate::problem::Problem;

pub(super) struct Work {
    conn: PoolConnection<Postgres>,
    open: bool,
}

impl Work {
    /// `BEGIN` on a business connection (its `lock_timeout` applies).
    pub(super) async fn begin(pool: &PgPool) -> Result<Work, Problem> {
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        Ok(Work { conn, open: true })
    }

    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// `PREPARE TRANSACTION '<gid>'`. On failure Postgres rolls the transaction back — but it
    /// reports the error before it releases the locks, so one more round trip on this session
    /// makes sure they are gone before anyone acts on the failure.
    pub(super) async fn prepare(mut self, id: BranchId) -> Result<(), sqlx::Error> {
        let done = id.run(&mut self.conn, "PREPARE TRANSACTION").await;
        if done.is_err() {
            sqlx::raw_sql("SELECT 1").execute(&mut *self.conn).await?;
        }
        self.open = false;
        done
    }

    pub(super) async fn rollback(mut self) -> Result<(), Problem> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}
