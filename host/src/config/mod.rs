//! The gateway's TOML configuration: strict (unknown keys are errors), with every error naming
//! the file, the key and the line.

mod error;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use error::ConfigError;

use crate::plugin::{
    Chain, Limits, LoadError, PluginSource, PluginSpec, Runtime, RuntimeOptions, WasmPlugin,
};

/// The configuration compiled into the binary; `trustgate config default` prints it.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The WebSocket listener.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// The admin HTTP listener.
    #[serde(default)]
    pub admin: AdminSection,
    /// Protocol limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Device pairing.
    #[serde(default)]
    pub pairing: PairingSection,
    /// The Kubernetes API client (TokenReview, OIDC keys); absent: plugins get
    /// `not-configured` from those host calls.
    #[serde(default)]
    pub kubernetes: Option<KubernetesSection>,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditSection,
    /// Sandbox limits and the compile cache.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// The auth chain.
    pub auth: AuthSection,
    #[serde(skip)]
    base_dir: PathBuf,
    #[serde(skip)]
    origin: String,
    #[serde(skip)]
    text: String,
}

/// `[gateway]`: the WebSocket listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Address of the WebSocket listener.
    pub listen: SocketAddr,
    /// Directory for the pairing store and admin token; relative to the config file.
    pub state_dir: PathBuf,
    /// TLS for the WebSocket listener (plain WebSocket without it).
    pub tls: Option<TlsSection>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            state_dir: PathBuf::from("trustgate-state"),
            tls: None,
        }
    }
}

/// `[gateway.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `[admin]`: health probes and the pairing API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
    /// File holding the admin API bearer token; created with a random token if missing.
    /// Defaults to `admin-token` in the state directory.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            token_file: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest WebSocket message accepted, in bytes.
    pub max_payload: usize,
    /// How long a client has to send `connect`.
    pub handshake_timeout_ms: u64,
    /// Concurrent connections beyond which `connect` is answered `RATE_LIMITED`.
    pub max_connections: usize,
    /// Interval of `tick` events.
    pub tick_interval_ms: u64,
    /// How long an operator's `worker.invoke` waits for the worker's result.
    pub invoke_timeout_ms: u64,
    /// How often live sessions' credentials are validated again (a revoked token, a deleted
    /// pod or a revoked device closes the session with 4401).
    pub revalidate_interval_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
            handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            tick_interval_ms: 15_000,
            invoke_timeout_ms: 30_000,
            revalidate_interval_ms: 300_000,
        }
    }
}

/// `[kubernetes]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    /// A kubeconfig file; without it the in-cluster configuration is used (service env,
    /// mounted ServiceAccount token re-read as it rotates, mounted `ca.crt`).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    pub context: Option<String>,
    /// Timeout of one API request.
    pub request_timeout_ms: u64,
    /// Extra attempts after 5xx, 429 or a connection failure.
    pub retries: u32,
    /// How long an accepted review is reused (never past the token's expiry).
    pub review_cache_ttl_ms: u64,
    /// How long a rejected review is reused.
    pub negative_cache_ttl_ms: u64,
    /// Bound on cached reviews.
    pub cache_max_entries: usize,
    /// Minimum interval between key-set refreshes caused by unknown key ids.
    pub jwks_min_refresh_ms: u64,
    /// Expected token issuer (default: from OIDC discovery).
    pub issuer: Option<String>,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        let d = crate::k8s::Settings::default();
        Self {
            kubeconfig: None,
            context: None,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            retries: d.retries,
            review_cache_ttl_ms: d.cache_ttl.as_millis() as u64,
            negative_cache_ttl_ms: d.negative_cache_ttl.as_millis() as u64,
            cache_max_entries: d.cache_max_entries,
            jwks_min_refresh_ms: d.jwks_min_refresh.as_millis() as u64,
            issuer: None,
        }
    }
}

/// `[audit]`: one JSON line per authentication decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// `stdout`, `off`, or a file path (appended; relative to the config file).
    pub output: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            output: "off".into(),
        }
    }
}

/// `[pairing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairingSection {
    /// The store of approved devices; defaults to `pairing.json` in the state directory.
    pub store: Option<PathBuf>,
    /// How long a pending pairing request waits for an operator.
    pub pending_ttl_ms: u64,
}

impl Default for PairingSection {
    fn default() -> Self {
        Self {
            store: None,
            pending_ttl_ms: 5 * 60 * 1000,
        }
    }
}

/// `[plugins]`: how plugins are run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// CPU deadline per plugin call, in milliseconds.
    pub deadline_ms: u64,
    /// Memory cap per plugin instance, in MiB.
    pub memory_mib: u64,
    /// Wall-clock timeout of one host call (TokenReview, JWT verification), in milliseconds.
    pub host_call_timeout_ms: u64,
    /// Directory for compiled plugins; relative paths are relative to the config file.
    pub cache_dir: Option<PathBuf>,
    /// Configured instances each plugin keeps ready.
    pub max_idle_instances: Option<usize>,
}

impl Default for PluginsSection {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            deadline_ms: l.deadline.as_millis() as u64,
            memory_mib: (l.memory_bytes >> 20) as u64,
            host_call_timeout_ms: l.host_call_timeout.as_millis() as u64,
            cache_dir: None,
            max_idle_instances: None,
        }
    }
}

/// `[auth]`: the chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `[[auth.plugins]]`, run in this order.
    pub plugins: Vec<PluginEntry>,
}

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
        config.validate(origin, text)?;
        Ok(config)
    }

    fn validate(&self, origin: &str, text: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError::at_key(origin, text, &key, message);
        let l = &self.limits;
        for (key, value, min) in [
            ("limits.max_payload", l.max_payload as u64, 1024),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms, 1),
            ("limits.max_connections", l.max_connections as u64, 1),
            ("limits.tick_interval_ms", l.tick_interval_ms, 10),
            ("limits.invoke_timeout_ms", l.invoke_timeout_ms, 1),
            (
                "limits.revalidate_interval_ms",
                l.revalidate_interval_ms,
                10,
            ),
            ("pairing.pending_ttl_ms", self.pairing.pending_ttl_ms, 1),
        ] {
            if value < min {
                return Err(err(
                    key.into(),
                    format!("must be at least {min}, got {value}"),
                ));
            }
        }
        if self.gateway.listen == self.admin.listen && self.gateway.listen.port() != 0 {
            return Err(err(
                "admin.listen".into(),
                format!("must differ from gateway.listen ({})", self.gateway.listen),
            ));
        }
        let p = &self.plugins;
        if p.deadline_ms == 0 || p.deadline_ms > 60_000 {
            return Err(err(
                "plugins.deadline_ms".into(),
                format!("must be between 1 and 60000, got {}", p.deadline_ms),
            ));
        }
        if p.memory_mib == 0 || p.memory_mib > 4096 {
            return Err(err(
                "plugins.memory_mib".into(),
                format!("must be between 1 and 4096, got {}", p.memory_mib),
            ));
        }
        if p.host_call_timeout_ms == 0 {
            return Err(err(
                "plugins.host_call_timeout_ms".into(),
                "must be at least 1".into(),
            ));
        }
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
                _ => {}
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

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The chain to load, in order.
    pub fn plugin_specs(&self) -> Vec<PluginSpec> {
        self.auth
            .plugins
            .iter()
            .map(|entry| PluginSpec {
                name: self.plugin_name(entry),
                source: match (&entry.builtin, &entry.path) {
                    (Some(b), _) => PluginSource::Builtin(b.clone()),
                    (None, Some(p)) => PluginSource::File {
                        path: self.resolve(p),
                        sha256: entry.sha256.clone(),
                    },
                    // validate() guarantees one of the two
                    (None, None) => PluginSource::Builtin(String::new()),
                },
                config: entry
                    .config
                    .as_ref()
                    .map(|t| toml_to_json(&toml::Value::Table(t.clone())))
                    .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
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
            .load_chain(&self.plugin_specs())
            .await
            .map_err(|(i, e)| self.plugin_error(i, &e))
    }

    fn plugin_error(&self, i: usize, e: &LoadError) -> ConfigError {
        let entry = format!("auth.plugins[{i}]");
        let key = match e {
            LoadError::HashMismatch { .. } => format!("{entry}.sha256"),
            LoadError::UnknownBuiltin { .. } => format!("{entry}.builtin"),
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
        ConfigError::at_key(&self.origin, &self.text, &key, e.to_string())
    }

    /// The state directory, resolved.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.gateway.state_dir)
    }

    /// The pairing store file, resolved.
    pub fn pairing_store(&self) -> PathBuf {
        match &self.pairing.store {
            Some(p) => self.resolve(p),
            None => self.state_dir().join("pairing.json"),
        }
    }

    /// The admin token file, resolved.
    pub fn admin_token_file(&self) -> PathBuf {
        match &self.admin.token_file {
            Some(p) => self.resolve(p),
            None => self.state_dir().join("admin-token"),
        }
    }

    /// TLS certificate and key files, resolved.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.gateway
            .tls
            .as_ref()
            .map(|t| (self.resolve(&t.cert_file), self.resolve(&t.key_file)))
    }

    /// Kubernetes client settings, resolved, if `[kubernetes]` is present.
    pub fn kubernetes_settings(&self) -> Option<crate::k8s::Settings> {
        self.kubernetes.as_ref().map(|k| crate::k8s::Settings {
            kubeconfig: k.kubeconfig.as_ref().map(|p| self.resolve(p)),
            context: k.context.clone(),
            request_timeout: Duration::from_millis(k.request_timeout_ms.max(1)),
            retries: k.retries,
            cache_ttl: Duration::from_millis(k.review_cache_ttl_ms),
            negative_cache_ttl: Duration::from_millis(k.negative_cache_ttl_ms),
            cache_max_entries: k.cache_max_entries,
            jwks_min_refresh: Duration::from_millis(k.jwks_min_refresh_ms),
            issuer: k.issuer.clone(),
        })
    }

    /// The audit log destination, resolved.
    pub fn audit_output(&self) -> crate::gateway::AuditOutput {
        match self.audit.output.as_str() {
            "off" | "" => crate::gateway::AuditOutput::Off,
            "stdout" | "-" => crate::gateway::AuditOutput::Stdout,
            path => crate::gateway::AuditOutput::File(self.resolve(Path::new(path))),
        }
    }

    /// Where this configuration came from (a path or `<embedded default>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Runtime settings derived from `[plugins]`.
    pub fn runtime_options(&self) -> RuntimeOptions {
        let p = &self.plugins;
        let defaults = RuntimeOptions::default();
        RuntimeOptions {
            limits: Limits {
                deadline: Duration::from_millis(p.deadline_ms),
                memory_bytes: (p.memory_mib as usize) << 20,
                host_call_timeout: Duration::from_millis(p.host_call_timeout_ms),
            },
            cache_dir: p.cache_dir.as_ref().map(|d| self.resolve(d)),
            max_idle_instances: p.max_idle_instances.unwrap_or(defaults.max_idle_instances),
        }
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
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().unwrap();
        assert!(!c.plugin_specs().is_empty());
    }

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
