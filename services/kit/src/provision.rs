//! Least privilege in Postgres: the roles and databases of a least-privilege set-up, as a plan
//! of SQL statements ([`plan`]) that `tandem db provision` prints ([`script`], a psql script)
//! or runs ([`run`]) as a superuser.
//!
//! Per component database (`tandem_inventory`, …):
//! - an **owner** role (`<database>_owner`, LOGIN): owns the database and its `public` schema,
//!   runs the migrations (`DATABASE_OWNER_URL`), so it owns every table they create;
//! - a **runtime** role (`<database>_app`, LOGIN): `CONNECT` to this database only, `USAGE` on
//!   its schema, `SELECT, INSERT, UPDATE, DELETE` on its tables and `USAGE, SELECT` on its
//!   sequences — granted on what exists and, through `ALTER DEFAULT PRIVILEGES FOR ROLE
//!   <owner>`, on what later migrations create. No DDL, no other database.
//! - `PUBLIC` loses `CONNECT` and `TEMPORARY` on the database, so no other role of the cluster
//!   (another component's runtime role included) can connect to it.
//!
//! Neither role is a superuser, may create databases or roles. 2PC needs nothing more: a role
//! may `PREPARE TRANSACTION` its own transactions and `COMMIT` / `ROLLBACK PREPARED` them (only
//! that role or a superuser may finish them, so the runtime role prepares and finishes every
//! branch: both service pools use `DATABASE_URL`), and `pg_prepared_xacts` / `pg_locks` are
//! readable by everyone. Running the plan again is safe: roles and the database are created
//! when missing, their attributes (and passwords, when given) set again; tables left owned by
//! another role (a database made by the zero-setup path) are handed to the owner role.

use std::fmt::Write as _;

use sqlx::Connection;

use crate::Error;

/// One role: its name and, when password authentication is used, its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub password: Password,
}

/// How a role's password is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// Not set (the server authenticates the role otherwise: trust, peer, certificates).
    None,
    /// This password.
    Literal(String),
    /// The psql variable of this name (`PASSWORD :'name'`, given with `psql -v name=…`): for
    /// a script that holds no secret (compose's `deploy/provision.sql`). [`run`] refuses it.
    PsqlVariable(String),
}

/// One component's database and its two roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub database: String,
    pub owner: Role,
    pub runtime: Role,
}

impl Component {
    /// The default roles of `database`: `<database>_owner` and `<database>_app`, with
    /// passwords `(owner's, runtime's)`.
    pub fn named(database: &str, (owner_pw, runtime_pw): (Password, Password)) -> Component {
        Component {
            database: database.to_string(),
            owner: Role {
                name: format!("{database}_owner"),
                password: owner_pw,
            },
            runtime: Role {
                name: format!("{database}_app"),
                password: runtime_pw,
            },
        }
    }

    /// `DATABASE_URL` (runtime role) and `DATABASE_OWNER_URL` of this component on the server of
    /// `server_url` (its host, port and query kept; its user and password replaced).
    pub fn urls(&self, server_url: &str) -> (String, String) {
        let url =
            |role: &Role| crate::db::database_url(&with_user(server_url, role), &self.database);
        (url(&self.runtime), url(&self.owner))
    }
}

/// `server_url` logging in as `role`.
fn with_user(server_url: &str, role: &Role) -> String {
    let Some(scheme_end) = server_url.find("://") else {
        return server_url.to_string();
    };
    let rest = &server_url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => host,
        None => &rest[..authority_end],
    };
    let enc = |s: &str| url_escape(s);
    let userinfo = match &role.password {
        Password::Literal(pw) => format!("{}:{}", enc(&role.name), enc(pw)),
        Password::None | Password::PsqlVariable(_) => enc(&role.name),
    };
    format!(
        "{}://{userinfo}@{host}{}",
        &server_url[..scheme_end],
        &rest[authority_end..]
    )
}

/// Percent-encoding of everything but unreserved characters (RFC 3986).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Where a statement of the plan runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// On the server's maintenance database `postgres`.
    Server(String),
    /// `CREATE DATABASE <database> OWNER <owner>` when it does not exist, otherwise
    /// `ALTER DATABASE … OWNER TO …` (neither may run inside a transaction block or a `DO`).
    Database { database: String, owner: String },
    /// Inside the component's database (as the superuser).
    InDatabase(String),
}

/// The statements that provision `c`, in order.
pub fn plan(c: &Component) -> Vec<Step> {
    let (db, owner, app) = (
        ident(&c.database),
        ident(&c.owner.name),
        ident(&c.runtime.name),
    );
    let mut steps = Vec::new();
    for role in [&c.owner, &c.runtime] {
        steps.push(Step::Server(format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN CREATE ROLE {}; END IF; END $$",
            literal(&role.name),
            ident(&role.name)
        )));
        let password = match &role.password {
            Password::None => String::new(),
            Password::Literal(pw) => format!(" PASSWORD {}", literal(pw)),
            Password::PsqlVariable(v) => format!(" PASSWORD :'{v}'"),
        };
        steps.push(Step::Server(format!(
            "ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS{password}",
            ident(&role.name)
        )));
    }
    steps.push(Step::Database {
        database: c.database.clone(),
        owner: c.owner.name.clone(),
    });
    steps.extend(
        [
            format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"),
            format!("GRANT CONNECT ON DATABASE {db} TO {app}"),
        ]
        .map(Step::Server),
    );
    steps.extend(
        [
            // Before Postgres 15 `public` belonged to the bootstrap superuser and anyone could
            // create in it; from 15 it belongs to the database owner. The same on both:
            format!("ALTER SCHEMA public OWNER TO {owner}"),
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string(),
            format!("GRANT USAGE ON SCHEMA public TO {app}"),
            // Tables a zero-setup start made (owned by its role) go to the owner role.
            format!(
                "DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> {} LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, {}); END LOOP; END $$",
                literal(&c.owner.name),
                literal(&c.owner.name)
            ),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}"),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}"),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}"
            ),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}"
            ),
        ]
        .map(Step::InDatabase),
    );
    steps
}

/// The plans of `components` as one psql script (`psql -v ON_ERROR_STOP=1 -f …` as a
/// superuser): the same statements [`run`] executes.
pub fn script(components: &[Component]) -> String {
    let mut out = String::from(
        "-- Tandem: least-privilege roles and databases (tandem db provision --print).\n\
         -- Run as a superuser: psql -v ON_ERROR_STOP=1 -d postgres -f this-file.sql\n",
    );
    for c in components {
        let _ = writeln!(out, "\n-- {}", c.database);
        let mut inside = false;
        for step in plan(c) {
            match step {
                Step::Server(sql) => {
                    if inside {
                        out.push_str("\\connect postgres\n");
                        inside = false;
                    }
                    let _ = writeln!(out, "{sql};");
                }
                Step::Database { database, owner } => {
                    let _ = writeln!(
                        out,
                        "SELECT format('CREATE DATABASE %I OWNER %I', {d}, {o}) WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {d})\n\\gexec\nALTER DATABASE {} OWNER TO {};",
                        ident(&database),
                        ident(&owner),
                        d = literal(&database),
                        o = literal(&owner),
                    );
                }
                Step::InDatabase(sql) => {
                    if !inside {
                        let _ = writeln!(out, "\\connect {}", ident(&c.database));
                        inside = true;
                    }
                    let _ = writeln!(out, "{sql};");
                }
            }
        }
        if inside {
            out.push_str("\\connect postgres\n");
        }
    }
    out
}

/// Run the plan of `c` on the server of `admin_url` (a superuser's URL).
pub async fn run(admin_url: &str, c: &Component) -> Result<(), Error> {
    if let Some(Password::PsqlVariable(v)) = [&c.owner.password, &c.runtime.password]
        .into_iter()
        .find(|p| matches!(p, Password::PsqlVariable(_)))
    {
        return Err(Error::Provision(format!(
            "password from psql variable {v:?}: only a printed script (psql -v) can set it"
        )));
    }
    let mut server = crate::db::admin_connection(admin_url).await?;
    let mut inside: Option<sqlx::PgConnection> = None;
    for step in plan(c) {
        match step {
            Step::Server(sql) => execute(&mut server, sql).await?,
            Step::Database { database, owner } => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
                )
                .bind(&database)
                .fetch_one(&mut server)
                .await?;
                let sql = if exists {
                    format!(
                        "ALTER DATABASE {} OWNER TO {}",
                        ident(&database),
                        ident(&owner)
                    )
                } else {
                    format!(
                        "CREATE DATABASE {} OWNER {}",
                        ident(&database),
                        ident(&owner)
                    )
                };
                execute(&mut server, sql).await?;
            }
            Step::InDatabase(sql) => {
                if inside.is_none() {
                    let url = crate::db::database_url(admin_url, &c.database);
                    let conn = sqlx::PgConnection::connect(&url)
                        .await
                        .map_err(Error::sql(format!("connecting to {}", c.database)))?;
                    inside = Some(conn);
                }
                if let Some(conn) = inside.as_mut() {
                    execute(conn, sql).await?;
                }
            }
        }
    }
    if let Some(conn) = inside {
        conn.close().await?;
    }
    server.close().await?;
    Ok(())
}

async fn execute(conn: &mut sqlx::PgConnection, sql: String) -> Result<(), Error> {
    let what = format!("provisioning: {}", first_words(&sql));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(drop)
        .map_err(Error::sql(what))
}

/// A statement's start for error messages, without a password literal.
fn first_words(sql: &str) -> String {
    let cut = sql.find(" PASSWORD ").unwrap_or(sql.len()).min(100);
    sql[..cut].to_string()
}

/// Drop roles `names` (tests, after their databases are gone; a role that still owns objects
/// or holds privileges elsewhere makes this fail, naming them).
pub async fn drop_roles(admin_url: &str, names: &[String]) -> Result<(), Error> {
    let mut server = crate::db::admin_connection(admin_url).await?;
    for name in names {
        execute(&mut server, format!("DROP ROLE IF EXISTS {}", ident(name))).await?;
    }
    server.close().await?;
    Ok(())
}

/// A random password: 32 characters from `[A-Za-z0-9]` (about 190 bits).
pub fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_each_role_on_the_same_server() {
        let c = Component::named(
            "tandem_inventory",
            (
                Password::Literal("o p".into()),
                Password::Literal("r@x".into()),
            ),
        );
        let (runtime, owner) =
            c.urls("postgres://postgres:secret@db.example:5433/postgres?sslmode=require");
        assert_eq!(
            runtime,
            "postgres://tandem_inventory_app:r%40x@db.example:5433/tandem_inventory?sslmode=require"
        );
        assert_eq!(
            owner,
            "postgres://tandem_inventory_owner:o%20p@db.example:5433/tandem_inventory?sslmode=require"
        );
        let c = Component::named("d", (Password::None, Password::None));
        assert_eq!(
            c.urls("postgres://127.0.0.1").0,
            "postgres://d_app@127.0.0.1/d"
        );
    }

    #[test]
    fn the_plan_revokes_public_and_grants_the_runtime_role_rows_only() {
        let c = Component::named(
            "tandem_x",
            (
                Password::Literal("a'b".into()),
                Password::PsqlVariable("app_password".into()),
            ),
        );
        let steps = plan(&c);
        let all: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
        let has = |needle: &str| all.iter().any(|s| s.contains(needle));
        assert!(has("REVOKE ALL ON DATABASE \\\"tandem_x\\\" FROM PUBLIC"));
        assert!(has(
            "GRANT CONNECT ON DATABASE \\\"tandem_x\\\" TO \\\"tandem_x_app\\\""
        ));
        assert!(has(
            "FOR ROLE \\\"tandem_x_owner\\\" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \\\"tandem_x_app\\\""
        ));
        assert!(has("PASSWORD 'a''b'"), "quoted password: {all:?}");
        assert!(has("PASSWORD :'app_password'"), "{all:?}");
        assert!(
            !has("GRANT CREATE")
                && !has(" SUPERUSER")
                && !has(" CREATEDB")
                && !has(" ALL PRIVILEGES")
        );
        // The database exists (owned by the owner) before anything is granted on it.
        let db = steps
            .iter()
            .position(|s| matches!(s, Step::Database { .. }))
            .unwrap();
        assert!(steps[..db].iter().all(|s| matches!(s, Step::Server(_))));
        let script = script(&[c]);
        assert!(script.contains("\\connect \"tandem_x\"\n"), "{script}");
        assert!(script.ends_with("\\connect postgres\n"), "{script}");
        assert_eq!(
            first_words("ALTER ROLE x LOGIN PASSWORD 'secret'"),
            "ALTER ROLE x LOGIN"
        );
    }
}
