//! The runtime's own view of what plugins decide on and decide: plain Rust types, independent
//! of any contract version. `contract.rs` converts them to and from each WIT version.

use std::fmt;

/// One authentication request: everything the peer presented. Plugins read it through the
/// contract; under 0.2 the secrets in [`Credentials`] are readable only with the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The presented credentials.
    pub credentials: Credentials,
    /// The verified device identity, if the peer proved one.
    pub device: Option<Device>,
    /// Connection facts.
    pub peer: Peer,
    /// The role the peer asked for: `worker` or `operator`.
    pub role: String,
    /// The scopes the peer asked for.
    pub scopes: Vec<String>,
}

/// The credentials a peer presented. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// The auth method the peer asked for, e.g. `k8s-sa-trust`, `device-token`, `none`.
    pub method: String,
    /// A bearer token (for `k8s-sa-trust`: the projected ServiceAccount JWT).
    pub token: Option<String>,
    /// A device token issued by the gateway after pairing.
    pub device_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Credentials")
            .field("method", &self.method)
            .field("token", &redact(&self.token))
            .field("device_token", &redact(&self.device_token))
            .finish()
    }
}

/// A device whose signature over the connection's challenge the host verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Lowercase hex SHA-256 of the raw Ed25519 public key.
    pub id: String,
    /// The public key, base64url without padding.
    pub public_key: String,
}

/// Where the connection comes from and what the client says it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    /// The remote socket address as `ip:port` (`[ip]:port` for IPv6).
    pub remote_addr: String,
    /// Whether the connection is TLS-protected end to end to the gateway.
    pub tls: bool,
    /// The client's self-reported id.
    pub client_id: String,
    /// The client's self-reported version.
    pub client_version: String,
    /// The client's self-reported platform, if any.
    pub platform: Option<String>,
    /// The client's self-reported instance id (e.g. the pod name), if any.
    pub instance_id: Option<String>,
    /// The host's id for this connection, for correlating logs.
    pub conn_id: String,
}

/// Who the peer is, as established by the plugins that allowed it so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Stable subject, e.g. `system:serviceaccount:ns:sa` or `device:<id>`.
    pub subject: String,
    /// The auth method that established the subject.
    pub method: String,
    /// Groups the subject belongs to.
    pub groups: Vec<String>,
    /// Facts about the subject (`namespace`, `pod-name`, `pod-uid`, ...), keys unique.
    pub attributes: Vec<(String, String)>,
    /// Roles the subject may take.
    pub roles: Vec<String>,
    /// Scopes the subject may hold.
    pub scopes: Vec<String>,
    /// When the credentials behind the identity expire (Unix ms), if they do.
    pub expires_at_ms: Option<u64>,
    /// Whether the identity may skip interactive device pairing.
    pub skip_pairing: bool,
}

impl Identity {
    /// The value of an attribute, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How a policy that lets the peer through narrows the identity so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Narrowing {
    /// Keep only these of the roles granted so far (`None`: keep all).
    pub roles: Option<Vec<String>>,
    /// Keep only these of the scopes granted so far (`None`: keep all).
    pub scopes: Option<Vec<String>>,
    /// Attributes to add (an attribute already established keeps its value).
    pub attributes: Vec<(String, String)>,
    /// An expiry; only an earlier one than the current takes effect.
    pub expires_at_ms: Option<u64>,
    /// Forbid skipping device pairing.
    pub veto_skip_pairing: bool,
}

/// What the client sees as the error code of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    /// Credentials missing, malformed, expired or rejected. Not retryable.
    Unauthenticated,
    /// Known but not allowed. Not retryable.
    Forbidden,
    /// A dependency is down; retry later.
    Unavailable,
    /// Throttled; retry later.
    RateLimited,
}

impl DenyCode {
    /// The contract's name for it: `unauthenticated`, `forbidden`, `unavailable`,
    /// `rate-limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate-limited",
        }
    }
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The protocol-level error code.
    pub code: DenyCode,
    /// A stable machine-readable reason, sent to the client as `details.reason`.
    pub reason: String,
    /// An explanation for the log only.
    pub message: String,
    /// For `Unavailable` and `RateLimited`: how long the client should wait, if known.
    pub retry_after_ms: Option<u32>,
}

/// A plugin's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The peer is this identity (first allow), or the same subject again, narrowing.
    Allow(Identity),
    /// No objection: the identity so far, narrowed as said (abstain if there is none).
    Permit(Narrowing),
    /// The peer is refused; the chain stops.
    Deny(Denial),
    /// No opinion.
    Abstain,
}

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// What a TokenReview (or a local JWT verification) found behind a token, as the embedder
/// holds it. Plugins read it through a handle; nothing is copied that they do not ask for.
pub trait Review: Send + Sync + 'static {
    /// Whether the token is valid for one of the requested audiences.
    fn authenticated(&self) -> bool;
    /// The authority's error text when the token was rejected.
    fn error(&self) -> Option<&str>;
    /// The username, e.g. `system:serviceaccount:ns:sa`.
    fn username(&self) -> &str;
    /// The user's UID.
    fn uid(&self) -> &str;
    /// Groups.
    fn groups(&self) -> &[String];
    /// The audiences the token is valid for among those requested.
    fn audiences(&self) -> &[String];
    /// One `extra` attribute.
    fn extra(&self, key: &str) -> Option<&[String]>;
    /// Every `extra` attribute (for contract 0.1, which copies them all).
    fn extras(&self) -> Vec<(String, Vec<String>)>;
    /// When the token expires (Unix ms), if known.
    fn expires_at_ms(&self) -> Option<u64>;
    /// The name of the trust source (cluster) that vouched for the token: `default` for the
    /// embedder's only one.
    fn cluster(&self) -> &str {
        "default"
    }
}

/// Why the host could not complete a review. None of these says anything about the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The host has no such service configured.
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// The authority could not be reached, timed out, or answered 5xx/429.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The authority refused the host's own credentials.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Anything else.
    #[error("failed: {0}")]
    Failed(String),
}
