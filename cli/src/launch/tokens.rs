//! Bearer tokens for a stack the launcher starts (`tandem up`, the demo, the bench, the tests):
//! one random token per role, given to every server ([`Tokens::auth_config`] in-process,
//! [`Tokens::env`] for a spawned binary), and the operator's used by the command's own calls.

use std::path::Path;

use rand::Rng;
use tandem_kit::auth::{AuthConfig, Role, SERVICE_TOKEN_ENV, TOKENS_ENV};

/// Characters of a generated token.
pub const TOKEN_LEN: usize = 32;

/// One token per role.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub client: String,
    pub operator: String,
    pub service: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(…)")
    }
}

fn random_token() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect()
}

impl Tokens {
    /// Three new random tokens (32 alphanumeric characters each, about 190 bits).
    pub fn generate() -> Self {
        Tokens {
            client: random_token(),
            operator: random_token(),
            service: random_token(),
        }
    }

    /// The token of `role`.
    pub fn get(&self, role: Role) -> &str {
        match role {
            Role::Client => &self.client,
            Role::Operator => &self.operator,
            Role::Service => &self.service,
        }
    }

    /// `TANDEM_TOKENS`' value: `client:…,operator:…,service:…`.
    pub fn entries(&self) -> String {
        [Role::Client, Role::Operator, Role::Service]
            .map(|r| format!("{}:{}", r.name(), self.get(r)))
            .join(",")
    }

    /// The settings of an in-process server: these tokens accepted, the service token sent.
    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            tokens: Some(self.entries()),
            tokens_file: None,
            service_token: Some(self.service.clone()),
        }
    }

    /// The environment of a spawned server: `TANDEM_TOKENS` and `TANDEM_SERVICE_TOKEN`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (TOKENS_ENV.into(), self.entries()),
            (SERVICE_TOKEN_ENV.into(), self.service.clone()),
        ]
    }

    /// Write the tokens to `path` as a `TANDEM_TOKENS_FILE` (one `role:token` a line, with a
    /// comment saying how to use them), readable by the owner only.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Replace any older file (its mode may be wider): remove, then create 0600.
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(
            f,
            "# Bearer tokens of a Tandem stack started by `tandem` (docs/security.md).\n\
             # Usable as TANDEM_TOKENS_FILE; send one as `Authorization: Bearer <token>`.\n\
             # The `tandem` commands send $TANDEM_TOKEN: export TANDEM_TOKEN=<the operator token>"
        )?;
        for r in [Role::Client, Role::Operator, Role::Service] {
            writeln!(f, "{}:{}", r.name(), self.get(r))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_load_and_differ() {
        let t = Tokens::generate();
        assert_ne!(t.client, t.operator);
        assert_ne!(t.operator, t.service);
        assert!(t.client.len() == TOKEN_LEN && t.client.bytes().all(|b| b.is_ascii_alphanumeric()));
        let auth = tandem_kit::auth::Auth::load(&t.auth_config()).unwrap();
        assert_eq!(auth.role_of(&t.client), Some(Role::Client));
        assert_eq!(auth.role_of(&t.operator), Some(Role::Operator));
        assert_eq!(auth.role_of(&t.service), Some(Role::Service));
        assert!(!format!("{t:?}").contains(&t.client));

        let dir = std::env::temp_dir().join(format!("tandem-tokens-{}", uuid::Uuid::now_v7()));
        let path = dir.join("tokens");
        t.write_file(&path).unwrap();
        let from_file = tandem_kit::auth::Auth::load(&AuthConfig {
            tokens_file: Some(path.clone()),
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(from_file.role_of(&t.operator), Some(Role::Operator));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
