//! `tandem db provision`: the least-privilege roles and databases of a deployment (see
//! `tandem_kit::provision` and docs/security.md). Runs the plan as a superuser and prints each
//! component's `DATABASE_URL` (runtime role) and `DATABASE_OWNER_URL` (owner role), or with
//! `--print` only prints the SQL as a psql script.

use clap::{Args, Subcommand};
use tandem_kit::provision::{self, Component, Password};

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Make (or bring up to date) each component's database, its owner role (migrations) and
    /// its runtime role (rows only, this database only); revoke CONNECT from PUBLIC.
    Provision(ProvisionArgs),
}

/// The databases of a full deployment: the stack, the Paxos acceptors and the orders service.
pub const DEFAULT_DATABASES: &str = "tandem_orchestrator,tandem_inventory,tandem_payment,tandem_shipping,tandem_acceptor_0,tandem_acceptor_1,tandem_acceptor_2,tandem_orders";

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// A superuser's URL of the server (its database name is ignored). The printed URLs keep
    /// its host, port and query.
    #[arg(
        long,
        env = "DATABASE_ADMIN_URL",
        default_value = crate::launch::DEFAULT_SERVER
    )]
    pub admin_url: String,
    /// The component databases (comma-separated); each gets roles `<database>_owner` and
    /// `<database>_app`.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_DATABASES)]
    pub databases: Vec<String>,
    /// Give the roles no password (the server authenticates them otherwise: trust, peer,
    /// certificates). Default: a new random password per role, set on every run.
    #[arg(long)]
    pub no_passwords: bool,
    /// Print the SQL (a psql script, passwords included) instead of running it.
    #[arg(long)]
    pub print: bool,
    /// With --print: set the passwords from psql variables `owner_password` and `app_password`
    /// (`psql -v owner_password=… -v app_password=…`), the same for every database, so the
    /// script holds no secret (compose's deploy/provision.sql is made this way).
    #[arg(long, requires = "print", conflicts_with = "no_passwords")]
    pub psql_passwords: bool,
}

pub async fn run(args: DbArgs) -> anyhow::Result<()> {
    match args.command {
        DbCommand::Provision(a) => provision(a).await,
    }
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let components = components(&args)?;
    if args.print {
        print!("{}", provision::script(&components));
        return Ok(());
    }
    for c in &components {
        provision::run(&args.admin_url, c)
            .await
            .map_err(|e| anyhow::anyhow!(tandem_kit::error::chain(&e)))?;
        let (runtime, owner) = c.urls(&args.admin_url);
        println!("# {}", c.database);
        println!("DATABASE_URL={runtime}");
        println!("DATABASE_OWNER_URL={owner}");
    }
    Ok(())
}

fn components(args: &ProvisionArgs) -> anyhow::Result<Vec<Component>> {
    args.databases
        .iter()
        .map(|d| {
            anyhow::ensure!(
                !d.is_empty()
                    && d.len() <= 57
                    && d.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "database name {d:?}: use lowercase letters, digits and _ (at most 57, so that `<name>_owner` fits Postgres' 63)"
            );
            let passwords = if args.no_passwords {
                (Password::None, Password::None)
            } else if args.psql_passwords {
                (
                    Password::PsqlVariable("owner_password".into()),
                    Password::PsqlVariable("app_password".into()),
                )
            } else {
                (
                    Password::Literal(provision::random_password()),
                    Password::Literal(provision::random_password()),
                )
            };
            Ok(Component::named(d, passwords))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProvisionArgs,
    }

    fn parse(args: &[&str]) -> ProvisionArgs {
        Cli::parse_from(std::iter::once("provision").chain(args.iter().copied())).args
    }

    /// compose's Postgres runs deploy/provision.sql: it must be what this command prints.
    #[test]
    fn deploy_provision_sql_is_current() {
        let args = parse(&["--print", "--psql-passwords"]);
        let want = provision::script(&components(&args).unwrap());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/provision.sql");
        let have = std::fs::read_to_string(path).unwrap();
        assert!(
            have == want,
            "deploy/provision.sql is stale: cargo tandem db provision --print --psql-passwords > deploy/provision.sql"
        );
        assert!(
            !want.contains("PASSWORD '"),
            "no secret in the committed script"
        );
    }

    #[test]
    fn database_names_are_plain_identifiers() {
        for bad in ["Tandem", "a-b", "x\"y"] {
            let args = parse(&["--databases", bad]);
            assert!(components(&args).is_err(), "{bad:?}");
        }
        let args = parse(&["--databases", "a_1,b", "--no-passwords"]);
        let c = components(&args).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].runtime.name, "b_app");
        assert_eq!(c[1].runtime.password, Password::None);
    }
}
