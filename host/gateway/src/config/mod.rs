//! The gateway's TOML configuration: strict (unknown keys are errors), with every error naming
//! the file, the key and the line.
//!
//! Each table belongs to the code it configures and is deserialised straight into that code's
//! settings type: `[gateway]` → [`ListenerSettings`], `[admin]` → [`AdminSettings`],
//! `[limits]` → [`ProtocolLimits`], `[pairing]` → [`PairingSettings`], `[audit]` →
//! [`AuditSettings`], `[plugins]` → the runtime's [`RuntimeSettings`], `[kubernetes]` → the
//! Kubernetes client's [`Settings`](trustgate_k8s::Settings). This module only composes them:
//! it resolves relative paths, runs each table's validation, and locates every error in the
//! file. `[[auth.plugins]]`, the chain itself, is the gateway's (`chain.rs`).

mod chain;
mod error;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use trustgate_runtime::RuntimeSettings;

pub use chain::{CredentialsGrant, PluginEntry, toml_to_json};
pub use error::ConfigError;

use crate::admin::AdminSettings;
use crate::audit::{AuditOutput, AuditSettings};
use crate::limits::ProtocolLimits;
use crate::listener::ListenerSettings;
use crate::pairing_store::PairingSettings;

/// The configuration compiled into the binary; `trustgate config default` prints it.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: the WebSocket listener and the state directory.
    #[serde(default)]
    pub gateway: ListenerSettings,
    /// `[admin]`: the admin HTTP listener.
    #[serde(default)]
    pub admin: AdminSettings,
    /// `[limits]`: protocol limits.
    #[serde(default)]
    pub limits: ProtocolLimits,
    /// `[pairing]`: device pairing.
    #[serde(default)]
    pub pairing: PairingSettings,
    /// `[kubernetes]`: the Kubernetes API client (TokenReview, OIDC keys); absent: plugins get
    /// `not-configured` from those host calls.
    #[serde(default)]
    pub kubernetes: Option<trustgate_k8s::Settings>,
    /// `[audit]`: the audit log.
    #[serde(default)]
    pub audit: AuditSettings,
    /// `[cluster]`: where state shared between replicas lives (`file` or `nats`).
    #[serde(default)]
    pub cluster: crate::cluster::ClusterSettings,
    /// `[plugins]`: sandbox limits and the compile cache.
    #[serde(default)]
    pub plugins: RuntimeSettings,
    /// `[auth]`: the chain.
    pub auth: AuthSection,
    #[serde(skip)]
    base_dir: PathBuf,
    #[serde(skip)]
    origin: String,
    #[serde(skip)]
    text: String,
}

/// `[auth]`: the chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `[[auth.plugins]]`, run in this order.
    pub plugins: Vec<PluginEntry>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &path.display().to_string(), &base)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<embedded default>", Path::new("."))
    }

    /// Parses `text` (from `origin`, for messages); relative paths resolve against `base_dir`.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::from_toml(origin, text, "", &e))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::from_toml(origin, text, &key, e.inner())
        })?;
        config.base_dir = base_dir.to_path_buf();
        config.origin = origin.to_string();
        config.text = text.to_string();
        config.validate()?;
        config.resolve_paths();
        Ok(config)
    }

    /// An error located at `key` of this file.
    pub(crate) fn error_at(&self, key: &str, message: String) -> ConfigError {
        ConfigError::at_key(&self.origin, &self.text, key, message)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let at = |table: &str, (key, message): (&str, String)| {
            self.error_at(&format!("{table}.{key}"), message)
        };
        self.limits.validate().map_err(|e| at("limits", e))?;
        self.pairing.validate().map_err(|e| at("pairing", e))?;
        self.cluster.validate().map_err(|e| at("cluster", e))?;
        self.plugins
            .validate()
            .map_err(|e| at("plugins", (e.key, e.message)))?;
        if let Some(k) = &self.kubernetes {
            k.validate()
                .map_err(|e| at("kubernetes", (e.key, e.message)))?;
        }
        if self.gateway.listen == self.admin.listen && self.gateway.listen.port() != 0 {
            return Err(self.error_at(
                "admin.listen",
                format!("must differ from gateway.listen ({})", self.gateway.listen),
            ));
        }
        self.validate_chain()
    }

    /// Makes every relative path in the settings relative to the configuration file.
    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.gateway.state_dir);
        if let Some(tls) = &mut self.gateway.tls {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
        }
        self.admin.token_file.as_mut().map(resolve);
        self.pairing.store.as_mut().map(resolve);
        self.cluster.credentials_file.as_mut().map(resolve);
        if let Some(tls) = &mut self.cluster.tls {
            resolve(&mut tls.ca_file);
            tls.cert_file.as_mut().map(resolve);
            tls.key_file.as_mut().map(resolve);
        }
        if let Some(k) = &mut self.kubernetes {
            k.kubeconfig.as_mut().map(resolve);
        }
        if let AuditOutput::File(p) = &mut self.audit.output {
            resolve(p);
        }
        self.plugins.cache_dir.as_mut().map(resolve);
        for entry in &mut self.auth.plugins {
            entry.path.as_mut().map(resolve);
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.gateway.state_dir
    }

    /// The pairing store file.
    pub fn pairing_store(&self) -> PathBuf {
        match &self.pairing.store {
            Some(p) => p.clone(),
            None => self.state_dir().join("pairing.json"),
        }
    }

    /// The admin token file.
    pub fn admin_token_file(&self) -> PathBuf {
        match &self.admin.token_file {
            Some(p) => p.clone(),
            None => self.state_dir().join("admin-token"),
        }
    }

    /// Where this configuration came from (a path or `<embedded default>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().unwrap();
        assert!(!c.plugin_specs().unwrap().is_empty());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let text = "[gateway]\nstate_dir = \"state\"\n[plugins]\ncache_dir = \"/abs/cache\"\n[audit]\noutput = \"audit.log\"\n[[auth.plugins]]\npath = \"p.wasm\"\n";
        let c = Config::parse(text, "x.toml", Path::new("/etc/tg")).unwrap();
        assert_eq!(c.state_dir(), Path::new("/etc/tg/state"));
        assert_eq!(c.pairing_store(), Path::new("/etc/tg/state/pairing.json"));
        assert_eq!(
            c.plugins.cache_dir.as_deref(),
            Some(Path::new("/abs/cache"))
        );
        assert_eq!(
            c.audit.output,
            AuditOutput::File(PathBuf::from("/etc/tg/audit.log"))
        );
        assert_eq!(
            c.auth.plugins[0].path.as_deref(),
            Some(Path::new("/etc/tg/p.wasm"))
        );
    }
}
