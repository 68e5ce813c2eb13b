//! `[cluster]`: where replicas keep their shared state.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where pairing state (and, with several replicas, the session registry) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// A JSON file in the state directory: one replica.
    #[default]
    File,
    /// NATS JetStream key-value buckets, shared by every replica.
    Nats,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// `file` (one replica, the default) or `nats`.
    pub backend: StateBackend,
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); required with `nats`.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed), if the server requires one.
    pub credentials_file: Option<PathBuf>,
    /// TLS to the NATS servers.
    pub tls: Option<ClusterTls>,
    /// This replica's name in the registry and on the invoke subject; default the pod name
    /// (`POD_NAME`), else the host name.
    pub replica_id: Option<String>,
    /// The key-value buckets.
    pub buckets: Buckets,
    /// Prefix of the request/reply subjects replicas route `worker.invoke` on.
    pub subject_prefix: String,
    /// JetStream replicas of each bucket the gateway creates (3 for a 3-node NATS cluster).
    pub bucket_replicas: usize,
    /// How often a replica announces that it is alive.
    pub heartbeat_ms: u64,
    /// How long after its last heartbeat a replica's sessions stop being listed (a crashed
    /// replica's sessions disappear within this time); at least 3 × `heartbeat_ms`. Unset, it
    /// is 10000 or 5 × `heartbeat_ms`, whichever is larger.
    pub session_ttl_ms: Option<u64>,
    /// How long one key-value operation may take before the write is refused `UNAVAILABLE`.
    pub request_timeout_ms: u64,
}

/// `[cluster.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The CA that signed the NATS servers' certificates (verified; required).
    pub ca_file: PathBuf,
    /// A client certificate, for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    /// Its key.
    pub key_file: Option<PathBuf>,
}

/// `[cluster.buckets]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Buckets {
    /// Approved devices and their token hashes.
    pub devices: String,
    /// Pending pairing requests (expire with `pairing.pending_ttl_ms`).
    pub pending: String,
    /// The cluster-wide session registry and replica heartbeats.
    pub sessions: String,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            devices: "trustgate-devices".into(),
            pending: "trustgate-pending".into(),
            sessions: "trustgate-sessions".into(),
        }
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            backend: StateBackend::File,
            servers: Vec::new(),
            credentials_file: None,
            tls: None,
            replica_id: None,
            buckets: Buckets::default(),
            subject_prefix: "trustgate".into(),
            bucket_replicas: 1,
            heartbeat_ms: 2_000,
            session_ttl_ms: None,
            request_timeout_ms: 2_000,
        }
    }
}

/// A NATS name: a bucket, a subject token or a replica id.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterSettings {
    /// How long after its last heartbeat a replica's sessions stop being listed:
    /// `session_ttl_ms`, or if unset 10 s or 5 heartbeats, whichever is longer.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_millis(
            self.session_ttl_ms
                .unwrap_or_else(|| 10_000u64.max(self.heartbeat_ms.saturating_mul(5))),
        )
    }

    /// Refuses settings that cannot work: `(key, message)` of the first offender.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.backend == StateBackend::File {
            if !self.servers.is_empty() {
                return Err((
                    "servers",
                    "NATS servers are given but `backend` is `file`; set `backend = \"nats\"`"
                        .into(),
                ));
            }
            return Ok(());
        }
        if self.servers.is_empty() {
            return Err((
                "servers",
                "the `nats` backend needs at least one server URL".into(),
            ));
        }
        for s in &self.servers {
            if s.parse::<async_nats::ServerAddr>().is_err() {
                return Err((
                    "servers",
                    format!("`{s}` is not a NATS URL (nats://host:port or tls://host:port)"),
                ));
            }
        }
        if let Some(id) = &self.replica_id
            && !is_name(id)
        {
            return Err((
                "replica_id",
                "must be 1 to 64 letters, digits, `-` or `_`".into(),
            ));
        }
        for (key, name) in [
            ("buckets", &self.buckets.devices),
            ("buckets", &self.buckets.pending),
            ("buckets", &self.buckets.sessions),
            ("subject_prefix", &self.subject_prefix),
        ] {
            if !is_name(name) {
                return Err((
                    key,
                    format!("`{name}` must be 1 to 64 letters, digits, `-` or `_`"),
                ));
            }
        }
        if !(1..=5).contains(&self.bucket_replicas) {
            return Err((
                "bucket_replicas",
                format!("must be between 1 and 5, got {}", self.bucket_replicas),
            ));
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err((
                "heartbeat_ms",
                format!("must be between 100 and 60000, got {}", self.heartbeat_ms),
            ));
        }
        if let Some(ttl) = self.session_ttl_ms
            && ttl < 3 * self.heartbeat_ms
        {
            return Err((
                "session_ttl_ms",
                format!(
                    "must be at least 3 × heartbeat_ms (3 × {} = {}), got {ttl}",
                    self.heartbeat_ms,
                    3 * self.heartbeat_ms,
                ),
            ));
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err((
                "request_timeout_ms",
                format!(
                    "must be between 100 and 60000, got {}",
                    self.request_timeout_ms
                ),
            ));
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(("tls", "`cert_file` and `key_file` go together".into()));
        }
        Ok(())
    }

    /// This replica's id: the configured one, else the pod name, else the host name.
    pub fn replica(&self) -> String {
        if let Some(id) = &self.replica_id {
            return id.clone();
        }
        let from_env = ["POD_NAME", "HOSTNAME"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .chain(
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string()),
            )
            .map(|s| {
                s.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(64)
                    .collect::<String>()
            })
            .find(|s| is_name(s));
        from_env.unwrap_or_else(|| {
            let mut raw = [0u8; 6];
            rand::fill(&mut raw);
            format!("replica-{}", hex::encode(raw))
        })
    }
}
