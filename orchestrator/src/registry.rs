//! The definition registry: every stored definition version by (name, version), the current
//! version per name (the most recently stored), loaded at start and on a cache miss, and the one
//! place a new definition is checked (format, configured services, storable text) and stored.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tandem_kit::problem::FieldIssue;

use crate::error::{Error, Result};
use crate::saga::{Definition, DefinitionError};
use crate::store::Store;

#[derive(Default)]
struct Loaded {
    by_version: HashMap<(String, String), Arc<Definition>>,
    current: HashMap<String, String>,
}

/// Loaded definitions (see the module docs).
pub struct Registry {
    store: Store,
    services: BTreeMap<String, String>,
    /// This node's name, sent as `Tandem-Sender` on every call to a service.
    node: String,
    /// This node's service token, sent on every call it makes (see `tandem_kit::auth`).
    auth: tandem_kit::auth::Auth,
    loaded: RwLock<Loaded>,
}

/// A definition as `POST /definitions` stored it.
pub struct Added {
    pub name: String,
    pub version: String,
    /// False: this version was stored before.
    pub created: bool,
}

impl Registry {
    /// This registry for node `node` (the `Tandem-Sender` of the calls made with it).
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    /// This registry with `auth`, whose service token the calls made with it carry.
    pub fn with_auth(mut self, auth: tandem_kit::auth::Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The default headers of this node's HTTP clients (`Tandem-Sender`, and
    /// `Authorization` when a service token is configured).
    pub fn sender_headers(&self) -> reqwest::header::HeaderMap {
        self.auth.client_headers(&self.node)
    }

    pub fn new(store: impl Into<Store>, services: BTreeMap<String, String>) -> Self {
        Registry {
            store: store.into(),
            services,
            node: "orchestrator".into(),
            auth: tandem_kit::auth::Auth::open(),
            loaded: RwLock::new(Loaded::default()),
        }
    }

    /// Service name → base URL.
    pub fn services(&self) -> &BTreeMap<String, String> {
        &self.services
    }

    /// Store the built-in definitions and the `*.json` files of `dir`, then load every stored
    /// version; the most recently stored version of each name is current.
    pub async fn load(&self, builtin: &[(&str, &str)], dir: Option<&Path>) -> Result<()> {
        let mut docs: Vec<(String, String)> = builtin
            .iter()
            .map(|(o, t)| (o.to_string(), t.to_string()))
            .collect();
        if let Some(dir) = dir {
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| {
                    Error::Config(format!("reading DEFINITIONS_DIR {}: {e}", dir.display()))
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            paths.sort();
            for p in paths {
                docs.push((p.display().to_string(), std::fs::read_to_string(&p)?));
            }
        }
        for (origin, text) in docs {
            let file_error = |message: String| Error::DefinitionFile {
                origin: origin.clone(),
                message,
            };
            let doc: Value =
                serde_json::from_str(&text).map_err(|e| file_error(format!("not JSON: {e}")))?;
            let def = check(&doc).map_err(|e| file_error(e.to_string()))?;
            self.store
                .insert_definition(&def.name, &Definition::version_of(&doc), &doc)
                .await?;
        }
        let stored = self.store.all_definitions().await?;
        let mut loaded = self.loaded.write().expect("definitions lock");
        for (name, version, body) in stored {
            match Definition::parse(&body) {
                Ok(def) => loaded.insert(version, def),
                Err(e) => {
                    tracing::error!(%name, %version, error = %e, "a stored definition no longer parses")
                }
            }
        }
        Ok(())
    }

    /// The current version of `name`.
    pub fn current(&self, name: &str) -> Option<(String, Arc<Definition>)> {
        let loaded = self.loaded.read().expect("definitions lock");
        let v = loaded.current.get(name)?;
        let d = loaded.by_version.get(&(name.to_string(), v.clone()))?;
        Some((v.clone(), d.clone()))
    }

    /// (name, current version, definition), sorted by name.
    pub fn list(&self) -> Vec<(String, String, Arc<Definition>)> {
        let loaded = self.loaded.read().expect("definitions lock");
        let mut v: Vec<_> = loaded
            .current
            .iter()
            .filter_map(|(name, version)| {
                let d = loaded.by_version.get(&(name.clone(), version.clone()))?;
                Some((name.clone(), version.clone(), d.clone()))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Version `version` of `name` (loaded from the database on a cache miss); None if it is
    /// not stored.
    pub async fn get(&self, name: &str, version: &str) -> Result<Option<Arc<Definition>>> {
        let key = (name.to_string(), version.to_string());
        if let Some(d) = self
            .loaded
            .read()
            .expect("definitions lock")
            .by_version
            .get(&key)
        {
            return Ok(Some(d.clone()));
        }
        let Some(body) = self.store.definition(name, version).await? else {
            return Ok(None);
        };
        let def = Definition::parse(&body).map_err(|e| Error::Corrupt {
            what: "definition",
            message: format!("{name}@{version}: {e}"),
        })?;
        let def = Arc::new(def);
        self.loaded
            .write()
            .expect("definitions lock")
            .by_version
            .insert(key, def.clone());
        Ok(Some(def))
    }

    /// The definition a request names: `version`, or the current one. 422 naming `/definition`
    /// or `/version` if there is none.
    pub async fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(String, Arc<Definition>)> {
        match version {
            None => self.current(name).ok_or_else(|| {
                Error::invalid("/definition", format!("unknown definition {name:?}"))
            }),
            Some(v) => match self.get(name, v).await? {
                Some(def) => Ok((v.to_string(), def)),
                None => Err(Error::invalid(
                    "/version",
                    format!("definition {name:?} has no version {v:?}"),
                )),
            },
        }
    }

    /// Check and store a new definition version, which becomes current.
    pub async fn add(&self, doc: &Value) -> Result<Added> {
        let def =
            check(doc).map_err(|DefinitionError::Invalid(errors)| Error::fields_at("", errors))?;
        let unknown = self.unknown_services(&def);
        if !unknown.is_empty() {
            return Err(Error::Invalid(unknown));
        }
        let version = Definition::version_of(doc);
        let created = self
            .store
            .insert_definition(&def.name, &version, doc)
            .await?;
        let name = def.name.clone();
        self.loaded
            .write()
            .expect("definitions lock")
            .insert(version.clone(), def);
        Ok(Added {
            name,
            version,
            created,
        })
    }

    fn unknown_services(&self, def: &Definition) -> Vec<FieldIssue> {
        let mut unknown = Vec::new();
        for (i, s) in def.steps.iter().enumerate() {
            let calls = [
                ("action", Some(&s.action)),
                ("compensation", s.compensation.as_ref()),
            ];
            for (what, call) in calls {
                if let Some(c) = call
                    && !self.services.contains_key(&c.service)
                {
                    unknown.push(FieldIssue {
                        pointer: format!("/steps/{i}/{what}/service"),
                        message: format!(
                            "service {:?} is not configured on this orchestrator",
                            c.service
                        ),
                    });
                }
            }
        }
        unknown
    }
}

/// Parse a definition document Postgres can store (no U+0000 anywhere, keys included).
fn check(doc: &Value) -> std::result::Result<Definition, DefinitionError> {
    if let Err(issue) = crate::text::check_json(doc, "") {
        return Err(DefinitionError::Invalid(vec![crate::saga::FieldError {
            pointer: issue.pointer,
            message: issue.message,
        }]));
    }
    Definition::parse(doc)
}

impl Loaded {
    fn insert(&mut self, version: String, def: Definition) {
        let name = def.name.clone();
        self.current.insert(name.clone(), version.clone());
        self.by_version.insert((name, version), Arc::new(def));
    }
}
