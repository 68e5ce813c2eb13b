//! `[[auth.plugins]]`: which plugins run, in which order, with which configuration and which
//! capabilities, and how their load errors are located in the configuration file.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use trustgate_runtime::{Chain, Grants, LoadError, PluginSource, PluginSpec, Runtime, WasmPlugin};

use super::{Config, ConfigError};

/// One `[[auth.plugins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// Name in logs, metrics and decisions; defaults to the built-in name or the file stem.
    pub name: Option<String>,
    /// A first-party plugin embedded in the binary.
    pub builtin: Option<String>,
    /// A component file; relative paths are relative to the config file.
    pub path: Option<PathBuf>,
    /// The SHA-256 the file must have (hex).
    pub sha256: Option<String>,
    /// The plugin's own configuration, handed to its `configure`.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// `"read"` lets the plugin read the raw bearer token and device token; by default
    /// (`"none"`) it can only hand the credentials to the gateway's verifications.
    #[serde(default)]
    pub credentials: CredentialsGrant,
}

/// What a plugin may do with the presented credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsGrant {
    /// Hand them to `token-review` / `verify-jwt` only; never read them.
    #[default]
    None,
    /// Read the raw token and device token.
    Read,
}

impl Config {
    pub(super) fn validate_chain(&self) -> Result<(), ConfigError> {
        let err = |key: String, message: String| self.error_at(&key, message);
        if self.auth.plugins.is_empty() {
            return Err(err(
                "auth.plugins".into(),
                "the auth chain is empty; configure at least one plugin".into(),
            ));
        }
        let mut names = Vec::new();
        for (i, entry) in self.auth.plugins.iter().enumerate() {
            let at = |field: &str| format!("auth.plugins[{i}].{field}");
            match (&entry.builtin, &entry.path) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        at("path"),
                        "give either `builtin` or `path`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(err(
                        format!("auth.plugins[{i}]"),
                        "a plugin needs `builtin = \"NAME\"` or `path = \"FILE.wasm\"`".into(),
                    ));
                }
                (Some(_), None) if entry.sha256.is_some() => {
                    return Err(err(
                        at("sha256"),
                        "`sha256` pins a plugin file; built-in plugins are part of the binary"
                            .into(),
                    ));
                }
                (Some(name), None) => {
                    self.builtin(i, name)?;
                }
                (None, Some(_)) => {}
            }
            if let Some(sha) = &entry.sha256
                && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(err(
                    at("sha256"),
                    "must be 64 hexadecimal characters (the SHA-256 of the file)".into(),
                ));
            }
            let name = self.plugin_name(entry);
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err(
                    at("name"),
                    format!("`{name}` is not a valid plugin name (letters, digits, `-`, `_`)"),
                ));
            }
            if names.contains(&name) {
                return Err(err(
                    at("name"),
                    format!(
                        "plugin name `{name}` is used twice; give each entry a distinct `name`"
                    ),
                ));
            }
            names.push(name);
        }
        Ok(())
    }

    fn plugin_name(&self, entry: &PluginEntry) -> String {
        if let Some(n) = &entry.name {
            return n.clone();
        }
        if let Some(b) = &entry.builtin {
            return b.clone();
        }
        entry
            .path
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The component of entry `i`'s `builtin = "name"`, or an error listing the built-ins.
    fn builtin(&self, i: usize, name: &str) -> Result<&'static [u8], ConfigError> {
        trustgate_builtins::builtin(name).ok_or_else(|| {
            let available: Vec<&str> = trustgate_builtins::BUILTINS
                .iter()
                .map(|(n, _)| *n)
                .collect();
            self.error_at(
                &format!("auth.plugins[{i}].builtin"),
                format!(
                    "no built-in plugin named `{name}` (built-ins: {})",
                    available.join(", ")
                ),
            )
        })
    }

    /// The chain to load, in order.
    pub fn plugin_specs(&self) -> Result<Vec<PluginSpec>, ConfigError> {
        self.auth
            .plugins
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let source = match (&entry.builtin, &entry.path) {
                    (Some(b), _) => {
                        PluginSource::bytes(format!("built-in plugin `{b}`"), self.builtin(i, b)?)
                    }
                    (None, Some(p)) => PluginSource::File {
                        path: p.clone(),
                        sha256: entry.sha256.clone(),
                    },
                    // validate() guarantees one of the two
                    (None, None) => {
                        return Err(self.error_at(
                            &format!("auth.plugins[{i}]"),
                            "a plugin needs `builtin` or `path`".into(),
                        ));
                    }
                };
                Ok(PluginSpec {
                    name: self.plugin_name(entry),
                    grants: Grants {
                        read_credentials: entry.credentials == CredentialsGrant::Read,
                    },
                    source,
                    config: entry
                        .config
                        .as_ref()
                        .map(|t| toml_to_json(&toml::Value::Table(t.clone())))
                        .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
                })
            })
            .collect()
    }

    /// Loads the whole auth chain with `runtime`. A plugin that cannot be loaded is reported
    /// against the entry of this file that references it (its `path`, `sha256`, `builtin` or
    /// the key of its `config` the plugin complained about).
    pub async fn load_chain(
        &self,
        runtime: &Runtime,
    ) -> Result<(Chain, Vec<Arc<WasmPlugin>>), ConfigError> {
        runtime
            .load_chain(&self.plugin_specs()?)
            .await
            .map_err(|(i, e)| self.plugin_error(i, &e))
    }

    fn plugin_error(&self, i: usize, e: &LoadError) -> ConfigError {
        let entry = format!("auth.plugins[{i}]");
        let key = match e {
            LoadError::HashMismatch { .. } => format!("{entry}.sha256"),
            LoadError::Configure { message, .. } => match config_key_prefix(message) {
                Some(k) => format!("{entry}.config.{k}"),
                None => format!("{entry}.config"),
            },
            LoadError::Config { .. } | LoadError::Failed { .. } => entry,
            _ if self
                .auth
                .plugins
                .get(i)
                .is_some_and(|p| p.builtin.is_some()) =>
            {
                format!("{entry}.builtin")
            }
            _ => format!("{entry}.path"),
        };
        self.error_at(&key, e.to_string())
    }
}

/// The key path a plugin's configuration error starts with (`rules[1].cidr: ...`), if any.
fn config_key_prefix(message: &str) -> Option<&str> {
    let (head, _) = message.split_once(": ")?;
    let is_key = !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c));
    is_key.then_some(head)
}

/// Converts a TOML value to JSON for a plugin's `configure` (datetimes become RFC 3339 strings).
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_becomes_json() {
        let t: toml::Value =
            toml::from_str("a = 1\nb = [\"x\", true]\n[c]\nd = 1979-05-27T07:32:00Z").unwrap();
        assert_eq!(
            toml_to_json(&t),
            serde_json::json!({"a": 1, "b": ["x", true], "c": {"d": "1979-05-27T07:32:00Z"}})
        );
    }
}
