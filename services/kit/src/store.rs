//! The services' one storage interface, on Postgres or on an embedded SQLite file (see
//! [`crate::sqlite`]). The backend is chosen once, at start-up, by the database URL
//! ([`crate::service::build`]); everything above this module — the barrier, the saga handler,
//! retention, every service's effects and read routes — is written once against it:
//!
//! - [`Db`]: the pool (Postgres or SQLite); [`Db::begin`] opens a [`Tx`] (on SQLite `BEGIN
//!   IMMEDIATE`: the write lock first, see [`crate::sqlite`]);
//! - [`Conn`]: a borrowed connection (an open transaction's), what effects run on;
//! - [`query`]: one portable query builder, `query(sql).bind(x)…` then `execute`,
//!   `fetch_one`, `fetch_optional`, `fetch_all`, `scalar`, `scalar_optional` on a `&Db`, a
//!   `&mut Tx` or a `&mut Conn`. Rows decode into any `T` that is an sqlx `FromRow` of both
//!   backends' rows (the derive gives both when every field decodes on both; tuples too).
//!
//! SQL is written once, in Postgres's dialect with `$1` parameters (SQLite's driver accepts
//! `$N`). The differences are translated here, and only these ([`to_sqlite`], tested below):
//!
//! | Postgres | SQLite |
//! |---|---|
//! | `now()` | `strftime('%Y-%m-%dT%H:%M:%fZ','now')` (UTC text, milliseconds) |
//! | `x = ANY($n)` with a text array bound | `x IN (SELECT value FROM json_each($n))`, the array bound as JSON text |
//! | a bound `DateTime<Utc>` | text in the same format as `now()`, so that text comparisons order as times do |
//! | `jsonb` (a bound `serde_json::Value`) | JSON text |
//! | `uuid` | sqlx's SQLite encoding (a 16-byte blob) |
//!
//! The SQLite schemas (`migrations/sqlite/<service>/`, the kit's tables in its own modules)
//! store times as that text, JSON as text and uuids as blobs. What has no portable form (the
//! barrier backstop's `SKIP LOCKED` batch) gives each dialect its own statement with
//! [`query_each`]; what needs Postgres itself (prepared transactions, the outbox relay) asks
//! for it through [`crate::service::App::postgres`].

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, FromRow, PgConnection, PgPool, SqliteConnection, SqlitePool};
use uuid::Uuid;

/// SQLite's `now()`: UTC, ISO 8601 with milliseconds and a `Z` (what [`format_time`] writes).
pub const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// A time as the SQLite schemas store it (the format of [`SQLITE_NOW`]).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A service's database: a Postgres pool or a SQLite pool.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db::Postgres(pool)
    }
}

impl From<&PgPool> for Db {
    fn from(pool: &PgPool) -> Self {
        Db::Postgres(pool.clone())
    }
}

impl Db {
    /// A write transaction (Postgres: `BEGIN`, the pool wait timed; SQLite: `BEGIN
    /// IMMEDIATE`).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(crate::metrics::begin(pool).await?),
            Db::Sqlite(pool) => Tx::Sqlite(crate::sqlite::begin(pool).await?),
        })
    }

    /// The Postgres pool, if this is one.
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite(_) => None,
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// The database's name: Postgres's database, or SQLite's file (stats and metrics label).
    pub fn name(&self) -> String {
        match self {
            Db::Postgres(pool) => pool
                .connect_options()
                .get_database()
                .unwrap_or("postgres")
                .to_string(),
            Db::Sqlite(pool) => pool.connect_options().get_filename().display().to_string(),
        }
    }

    /// Close every connection.
    pub async fn close(&self) {
        match self {
            Db::Postgres(pool) => pool.close().await,
            Db::Sqlite(pool) => pool.close().await,
        }
    }
}

/// An open write transaction on either backend. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub enum Tx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl Tx {
    /// The transaction's connection, for an effect.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Postgres(tx) => Conn::Postgres(tx),
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// A borrowed connection (an open transaction's): what effects run on. The 2PC / 3PC / Paxos
/// participants wrap their Postgres connection ([`Conn::Postgres`]).
#[derive(Debug)]
pub enum Conn<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// The same connection, borrowed again (to pass it on and use it after).
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Postgres(c) => Conn::Postgres(c),
            Conn::Sqlite(c) => Conn::Sqlite(c),
        }
    }

    /// The Postgres connection, if this is one.
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match self {
            Conn::Postgres(c) => Some(c),
            Conn::Sqlite(_) => None,
        }
    }
}

/// Where a [`Query`] runs: a pool or a connection of either backend.
#[derive(Debug)]
pub enum On<'a> {
    PgPool(&'a PgPool),
    PgConn(&'a mut PgConnection),
    SqlitePool(&'a SqlitePool),
    SqliteConn(&'a mut SqliteConnection),
}

/// What a [`Query`] can run on: `&Db`, `&mut Tx`, `&mut Conn`.
pub trait Target<'a> {
    fn on(self) -> On<'a>;
}

impl<'a> Target<'a> for &'a Db {
    fn on(self) -> On<'a> {
        match self {
            Db::Postgres(p) => On::PgPool(p),
            Db::Sqlite(p) => On::SqlitePool(p),
        }
    }
}

impl<'a> Target<'a> for &'a mut Conn<'_> {
    fn on(self) -> On<'a> {
        match self {
            Conn::Postgres(c) => On::PgConn(c),
            Conn::Sqlite(c) => On::SqliteConn(c),
        }
    }
}

impl<'a> Target<'a> for &'a mut Tx {
    fn on(self) -> On<'a> {
        match self {
            Tx::Postgres(tx) => On::PgConn(tx),
            Tx::Sqlite(tx) => On::SqliteConn(tx),
        }
    }
}

/// A bound value, encoded for the backend when the query runs.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    Text(Option<Cow<'a, str>>),
    I16(i16),
    I32(i32),
    I64(Option<i64>),
    F64(f64),
    Bool(bool),
    Uuid(Option<Uuid>),
    Json(Option<Cow<'a, Value>>),
    Time(Option<DateTime<Utc>>),
    TextList(&'a [String]),
}

/// A value [`Query::bind`] takes.
pub trait Bind<'a> {
    fn arg(self) -> Arg<'a>;
}

macro_rules! bind_as {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl<'a> Bind<'a> for $t {
            fn arg(self) -> Arg<'a> {
                let $v = self;
                $e
            }
        })*
    };
}

bind_as! {
    &'a str => |v| Arg::Text(Some(Cow::Borrowed(v)));
    &'a String => |v| Arg::Text(Some(Cow::Borrowed(v.as_str())));
    String => |v| Arg::Text(Some(Cow::Owned(v)));
    Option<&'a str> => |v| Arg::Text(v.map(Cow::Borrowed));
    &'a Option<String> => |v| Arg::Text(v.as_deref().map(Cow::Borrowed));
    i16 => |v| Arg::I16(v);
    i32 => |v| Arg::I32(v);
    i64 => |v| Arg::I64(Some(v));
    Option<i64> => |v| Arg::I64(v);
    f64 => |v| Arg::F64(v);
    bool => |v| Arg::Bool(v);
    Uuid => |v| Arg::Uuid(Some(v));
    Option<Uuid> => |v| Arg::Uuid(v);
    Value => |v| Arg::Json(Some(Cow::Owned(v)));
    &'a Value => |v| Arg::Json(Some(Cow::Borrowed(v)));
    DateTime<Utc> => |v| Arg::Time(Some(v));
    Option<DateTime<Utc>> => |v| Arg::Time(v);
    &'a [String] => |v| Arg::TextList(v);
    &'a Vec<String> => |v| Arg::TextList(v.as_slice());
}

impl<'a, T: serde::Serialize> Bind<'a> for sqlx::types::Json<T> {
    fn arg(self) -> Arg<'a> {
        Arg::Json(Some(Cow::Owned(
            serde_json::to_value(&self.0).unwrap_or(Value::Null),
        )))
    }
}

/// A row type both backends decode (sqlx's `FromRow` derive gives both when every field
/// decodes on both; tuples of such fields are rows too).
pub trait FromBoth:
    for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

impl<T> FromBoth for T where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

/// The SQL of a query: one text for both, or one per dialect ([`query_each`]).
#[derive(Debug, Clone, Copy)]
enum Sql {
    One(&'static str),
    Each {
        postgres: &'static str,
        sqlite: &'static str,
    },
}

/// A portable query: SQL in Postgres's dialect with `$N` parameters, and its bound values.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is run"]
pub struct Query<'a> {
    sql: Sql,
    args: Vec<Arg<'a>>,
}

/// A query on either backend (see the module docs for the dialect it is written in).
pub fn query<'a>(sql: &'static str) -> Query<'a> {
    Query {
        sql: Sql::One(sql),
        args: Vec::new(),
    }
}

/// A query with a statement per dialect, for what has no portable form (keep these rare; the
/// parameters mean the same in both).
pub fn query_each<'a>(postgres: &'static str, sqlite: &'static str) -> Query<'a> {
    Query {
        sql: Sql::Each { postgres, sqlite },
        args: Vec::new(),
    }
}

/// `sql` (Postgres's dialect) in SQLite's: the translations of the module docs' table.
pub fn to_sqlite(sql: &str) -> Cow<'_, str> {
    const ANY: &str = "= ANY($";
    if !sql.contains("now()") && !sql.contains(ANY) {
        return Cow::Borrowed(sql);
    }
    let sql = sql.replace("now()", SQLITE_NOW);
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql.as_str();
    while let Some(at) = rest.find(ANY) {
        out.push_str(&rest[..at]);
        let after = &rest[at + ANY.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str("IN (SELECT value FROM json_each($");
            out.push_str(&after[..digits]);
            out.push_str("))");
            rest = &after[digits + 1..];
        } else {
            out.push_str(ANY);
            rest = after;
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

impl<'a> Query<'a> {
    /// Bind the next parameter (`$1`, `$2`, … in order).
    pub fn bind(mut self, value: impl Bind<'a>) -> Self {
        self.args.push(value.arg());
        self
    }

    fn pg_sql(&self) -> &'static str {
        match self.sql {
            Sql::One(sql) | Sql::Each { postgres: sql, .. } => sql,
        }
    }

    fn sqlite_sql(&self) -> sqlx::SqlStr {
        use sqlx::SqlSafeStr;
        match self.sql {
            Sql::One(sql) => match to_sqlite(sql) {
                Cow::Borrowed(_) => sql.into_sql_str(),
                Cow::Owned(s) => sqlx::AssertSqlSafe(s).into_sql_str(),
            },
            Sql::Each { sqlite, .. } => sqlite.into_sql_str(),
        }
    }

    fn pg_args(&self) -> Result<PgArguments, sqlx::Error> {
        let mut a = PgArguments::default();
        for arg in &self.args {
            match arg {
                Arg::Text(v) => a.add(v.as_deref()),
                Arg::I16(v) => a.add(*v),
                Arg::I32(v) => a.add(*v),
                Arg::I64(v) => a.add(*v),
                Arg::F64(v) => a.add(*v),
                Arg::Bool(v) => a.add(*v),
                Arg::Uuid(v) => a.add(*v),
                Arg::Json(v) => a.add(v.as_deref()),
                Arg::Time(v) => a.add(*v),
                Arg::TextList(v) => a.add(*v),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok(a)
    }

    fn sqlite_args(&self) -> Result<SqliteArguments, sqlx::Error> {
        let mut a = SqliteArguments::default();
        for arg in &self.args {
            match arg {
                Arg::Text(v) => a.add(v.as_deref().map(str::to_owned)),
                Arg::I16(v) => a.add(*v),
                Arg::I32(v) => a.add(*v),
                Arg::I64(v) => a.add(*v),
                Arg::F64(v) => a.add(*v),
                Arg::Bool(v) => a.add(*v),
                Arg::Uuid(v) => a.add(*v),
                Arg::Json(v) => a.add(v.as_deref().map(|v| v.to_string())),
                Arg::Time(v) => a.add(v.as_ref().map(format_time)),
                Arg::TextList(v) => {
                    a.add(serde_json::to_string(v).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
                }
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok(a)
    }

    /// Run it; the number of rows affected.
    pub async fn execute<'e>(self, on: impl Target<'e>) -> Result<u64, sqlx::Error> {
        let done = match on.on() {
            On::PgPool(p) => sqlx::query_with(self.pg_sql(), self.pg_args()?)
                .execute(p)
                .await?
                .rows_affected(),
            On::PgConn(c) => sqlx::query_with(self.pg_sql(), self.pg_args()?)
                .execute(c)
                .await?
                .rows_affected(),
            On::SqlitePool(p) => sqlx::query_with(self.sqlite_sql(), self.sqlite_args()?)
                .execute(p)
                .await?
                .rows_affected(),
            On::SqliteConn(c) => sqlx::query_with(self.sqlite_sql(), self.sqlite_args()?)
                .execute(c)
                .await?
                .rows_affected(),
        };
        Ok(done)
    }

    /// Every row.
    pub async fn fetch_all<'e, T: FromBoth>(
        self,
        on: impl Target<'e>,
    ) -> Result<Vec<T>, sqlx::Error> {
        match on.on() {
            On::PgPool(p) => self.pg_as()?.fetch_all(p).await,
            On::PgConn(c) => self.pg_as()?.fetch_all(c).await,
            On::SqlitePool(p) => self.sqlite_as()?.fetch_all(p).await,
            On::SqliteConn(c) => self.sqlite_as()?.fetch_all(c).await,
        }
    }

    /// The first row, if any.
    pub async fn fetch_optional<'e, T: FromBoth>(
        self,
        on: impl Target<'e>,
    ) -> Result<Option<T>, sqlx::Error> {
        match on.on() {
            On::PgPool(p) => self.pg_as()?.fetch_optional(p).await,
            On::PgConn(c) => self.pg_as()?.fetch_optional(c).await,
            On::SqlitePool(p) => self.sqlite_as()?.fetch_optional(p).await,
            On::SqliteConn(c) => self.sqlite_as()?.fetch_optional(c).await,
        }
    }

    /// The first row (`RowNotFound` if none).
    pub async fn fetch_one<'e, T: FromBoth>(self, on: impl Target<'e>) -> Result<T, sqlx::Error> {
        match on.on() {
            On::PgPool(p) => self.pg_as()?.fetch_one(p).await,
            On::PgConn(c) => self.pg_as()?.fetch_one(c).await,
            On::SqlitePool(p) => self.sqlite_as()?.fetch_one(p).await,
            On::SqliteConn(c) => self.sqlite_as()?.fetch_one(c).await,
        }
    }

    /// The first column of the first row (`RowNotFound` if none).
    pub async fn scalar<'e, T>(self, on: impl Target<'e>) -> Result<T, sqlx::Error>
    where
        (T,): FromBoth,
    {
        Ok(self.fetch_one::<(T,)>(on).await?.0)
    }

    /// The first column of the first row, if any.
    pub async fn scalar_optional<'e, T>(self, on: impl Target<'e>) -> Result<Option<T>, sqlx::Error>
    where
        (T,): FromBoth,
    {
        Ok(self.fetch_optional::<(T,)>(on).await?.map(|(t,)| t))
    }

    fn pg_as<T: for<'r> FromRow<'r, PgRow>>(
        &self,
    ) -> Result<sqlx::query::QueryAs<'static, sqlx::Postgres, T, PgArguments>, sqlx::Error> {
        Ok(sqlx::query_as_with(self.pg_sql(), self.pg_args()?))
    }

    fn sqlite_as<T: for<'r> FromRow<'r, SqliteRow>>(
        &self,
    ) -> Result<sqlx::query::QueryAs<'static, sqlx::Sqlite, T, SqliteArguments>, sqlx::Error> {
        Ok(sqlx::query_as_with(self.sqlite_sql(), self.sqlite_args()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_now_and_any_and_leaves_the_rest() {
        let plain = "SELECT a FROM t WHERE b = $1";
        assert!(matches!(to_sqlite(plain), Cow::Borrowed(s) if s == plain));
        assert_eq!(
            to_sqlite("UPDATE t SET at = now() WHERE id = $1"),
            format!("UPDATE t SET at = {SQLITE_NOW} WHERE id = $1")
        );
        assert_eq!(
            to_sqlite("DELETE FROM t WHERE id = ANY($12) AND x = ANY($2)"),
            "DELETE FROM t WHERE id IN (SELECT value FROM json_each($12)) AND x IN (SELECT value FROM json_each($2))"
        );
        // Not a bound array: left alone.
        assert_eq!(
            to_sqlite("SELECT 1 WHERE 1 = ANY($x)"),
            "SELECT 1 WHERE 1 = ANY($x)"
        );
    }

    #[test]
    fn bound_times_have_the_format_of_sqlite_now() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T16:25:42.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_time(&t), "2026-12-01T16:25:42.123Z");
    }

    async fn sqlite_db() -> (std::path::PathBuf, Db) {
        let dir = std::env::temp_dir().join(format!("tandem-store-{}", Uuid::now_v7()));
        let pool = crate::sqlite::open(&crate::sqlite::url(&dir.join("s.db")), 2)
            .await
            .unwrap();
        (dir, Db::Sqlite(pool))
    }

    /// SQLite's "database is locked" (the busy timeout ran out behind another writer) is a 503
    /// to retry, as Postgres's lock timeout is.
    #[tokio::test]
    async fn a_busy_sqlite_is_a_503_to_retry() {
        let (dir, db) = sqlite_db().await;
        let Db::Sqlite(pool) = &db else {
            unreachable!()
        };
        let held = crate::sqlite::begin(pool).await.unwrap();
        let mut c = pool.acquire().await.unwrap();
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut *c)
            .await
            .unwrap();
        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *c)
            .await
            .unwrap_err();
        let p = crate::Problem::from(busy);
        assert_eq!(
            (p.status.as_u16(), p.slug.as_str()),
            (503, "lock-timeout"),
            "{p:?}"
        );
        drop(c);
        held.rollback().await.unwrap();
        db.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// Every translation and every bound type, on SQLite (the Postgres side is exercised by
    /// every Postgres test of the services).
    #[tokio::test]
    async fn sqlite_round_trips_every_bound_type_and_orders_times_as_text() {
        let (dir, db) = sqlite_db().await;
        query(
            "CREATE TABLE t (id BLOB PRIMARY KEY, name TEXT, n INTEGER, small INTEGER, doc TEXT,
             at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
        )
        .execute(&db)
        .await
        .unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let past = Utc::now() - chrono::Duration::seconds(5);
        let mut tx = db.begin().await.unwrap();
        query("INSERT INTO t (id, name, n, small, doc, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(a)
            .bind("a")
            .bind(7_i64)
            .bind(3_i16)
            .bind(serde_json::json!({"k": [1, 2]}))
            .bind(past)
            .execute(&mut tx)
            .await
            .unwrap();
        let n = query("INSERT INTO t (id, name, n, small, doc) VALUES ($1, $2, $3, $4, $5)")
            .bind(b)
            .bind("b")
            .bind(Option::<i64>::None)
            .bind(4_i16)
            .bind(serde_json::json!("x"))
            .execute(&mut tx.conn())
            .await
            .unwrap();
        assert_eq!(n, 1);
        tx.commit().await.unwrap();
        type Row = (Uuid, String, Option<i64>, i16, Value, DateTime<Utc>);
        let rows: Vec<Row> = query("SELECT id, name, n, small, doc, at FROM t ORDER BY at")
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, a, "the bound past time sorts before now()");
        assert_eq!(rows[0].4, serde_json::json!({"k": [1, 2]}));
        assert_eq!(
            (rows[0].5 - past).num_milliseconds(),
            0,
            "a bound time reads back (to the millisecond)"
        );
        assert_eq!((rows[1].2, rows[1].3), (None, 4));
        // A bound time compares with now() as a time does.
        let older: i64 = query("SELECT count(*) FROM t WHERE at < $1")
            .bind(Utc::now() - chrono::Duration::seconds(1))
            .scalar(&db)
            .await
            .unwrap();
        assert_eq!(older, 1);
        let names = vec!["a".to_string(), "zz".to_string()];
        let hit: Vec<(String,)> = query("SELECT name FROM t WHERE name = ANY($1)")
            .bind(&names)
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(hit, vec![("a".to_string(),)]);
        let none: Option<String> = query("SELECT name FROM t WHERE id = $1")
            .bind(Uuid::now_v7())
            .scalar_optional(&db)
            .await
            .unwrap();
        assert_eq!(none, None);
        db.close().await;
        std::fs::remove_dir_all(dir).ok();
    }
}
